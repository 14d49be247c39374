/// # Calibration
///
/// Everything needed to measure NVFP4 activation scales (`input_scale = amax / 2688`, spec §4):
/// - `Data/`: `CalibrationData` turns JSONL, text or a directory of them into a deterministic `CalibrationSet`
///   of token sequences (with a SHA-256 content hash so runs can prove they used the same samples), and ships a
///   default public-domain calibration set and a held-out evaluation set (`Resources/README.md`).
/// - The observers and the layer-streaming calibration loop live beside it.
/// - `CalibrationPlan` groups the selected samples into chunks with ``calibrationChunkRanges(tokenCounts:chunkTokens:)``,
///   the one grouping every schedule uses; ``LayerStreamingCalibrator`` runs all layers or a worker's range of them.
