// Module Checkpoint: implementation in progress.
