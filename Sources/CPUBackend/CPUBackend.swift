// Module CPUBackend: implementation in progress.
