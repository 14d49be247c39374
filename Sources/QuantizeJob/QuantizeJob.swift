// Module QuantizeJob: implementation in progress.
