// Module Evaluation: implementation in progress.
