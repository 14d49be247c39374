import JobModel
import LlamaModel
import SafeTensors

extension JobSpec {
    /// The tensors each Linear of `config` becomes in this job's layout and scheme, with the `--exclude`d ones kept
    /// in their `source` dtype. Throws when the patterns do not fit the model (``LinearExclusionError``).
    public func tensorLayout(config: LlamaConfig, source: SafeTensorsModel) throws -> LinearTensorLayout {
        var excluded: [String: SafeTensorsDType] = [:]
        for name in try linearExclusion(config: config).moduleNames {
            excluded[name] = try source.info(name + ".weight").dtype
        }
        return LinearTensorLayout(layout: layout, scheme: scheme, excluded: excluded)
    }

    /// What `calibration.json` says about `plan`, computed on `deviceLabel` (its amax values are added as layers
    /// complete).
    public func calibrationRecord(plan: CalibrationPlan, deviceLabel: String) -> CalibrationRecord {
        var record = CalibrationRecord(source: plan.source, samples: plan.sampleCount, tokens: plan.tokenCount,
                                       contentHash: plan.contentHash, device: deviceLabel)
        record.gptq = gptq
        record.scaleSearch = scaleSearch
        return record
    }
}
