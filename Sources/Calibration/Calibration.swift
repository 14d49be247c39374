// Module Calibration: implementation in progress.
