// Module ComputeBackend: implementation in progress.
