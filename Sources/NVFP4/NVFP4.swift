// Module NVFP4: implementation in progress.
