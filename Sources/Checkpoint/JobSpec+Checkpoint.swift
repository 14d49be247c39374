import JobModel

extension JobSpec {
    /// The tensors one quantized Linear becomes in this job's layout and scheme.
    public var tensorLayout: LinearTensorLayout { LinearTensorLayout(layout: layout, scheme: scheme) }

    /// What `calibration.json` says about `plan`, computed on `deviceLabel` (its amax values are added as layers
    /// complete).
    public func calibrationRecord(plan: CalibrationPlan, deviceLabel: String) -> CalibrationRecord {
        CalibrationRecord(source: plan.source, samples: plan.sampleCount, tokens: plan.tokenCount,
                          contentHash: plan.contentHash, device: deviceLabel)
    }
}
