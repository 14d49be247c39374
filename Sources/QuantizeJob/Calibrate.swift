import CPUBackend
import CUDABackend
import CUDARuntime
import Calibration
import Checkpoint
import ComputeBackend
import Evaluation
import Foundation
import LlamaModel
import Logging
import NVFP4
import SafeTensors
import Tokenizer

/// Where calibration runs.
public enum ComputeDevice: CustomStringConvertible {
    case cpu
    /// An opened GPU (kernels compiled, cuBLASLt loaded).
    case cuda(CUDADevice)

    public var description: String {
        switch self {
        case .cpu: "cpu"
        case .cuda(let device): "cuda:\(device.context.ordinal) (\(device.context.name), \(device.context.architecture))"
        }
    }

    /// `cpu`, `cuda`, `cuda:N` or `auto`. `auto` opens GPU 0 when one is usable and otherwise says in one log line why
    /// it uses the CPU; an explicit `cuda` that cannot be opened fails at once with the reason.
    /// `gpuMemoryLimit`: most bytes of GPU memory the process may allocate (`--gpu-memory`).
    public static func select(_ name: String, gpuMemoryLimit: Int? = nil, logger: Logger,
                              locator: CUDALibraryLocator = CUDALibraryLocator()) throws -> ComputeDevice {
        switch try DeviceChoice(parsing: name) {
        case .cpu: return .cpu
        case .auto:
            do {
                return .cuda(try CUDADevice(ordinal: 0, locator: locator, memoryLimit: gpuMemoryLimit, logger: logger))
            } catch {
                logger.info("device auto: no usable CUDA GPU (\(error)); using the CPU")
                return .cpu
            }
        case .cuda(let ordinal):
            do {
                return .cuda(try CUDADevice(ordinal: ordinal, locator: locator, memoryLimit: gpuMemoryLimit, logger: logger))
            } catch {
                throw QuantizeJobError.deviceUnavailable(device: name, reason: "\(error)")
            }
        }
    }

    /// Bytes of GPU memory in use on this device (all processes', as the driver reports it); 0 on the CPU or when
    /// the driver cannot say.
    public func memoryInUse() -> Int {
        switch self {
        case .cpu: 0
        case .cuda(let device): (try? device.memoryInUse()) ?? 0
        }
    }

    /// The weight quantizer of this device: the GPU's for CUDA (bit-identical to the CPU's), none (the CPU's) else.
    public var bf16WeightQuantizer: BF16WeightQuantizer? {
        switch self {
        case .cpu: nil
        case .cuda(let device):
            { [quantizer = CUDANVFP4Quantizer(device: device)] values, rows, cols, s2, tensor in
                try quantizer.quantize(bf16: values, rows: rows, cols: cols, weightScale2: s2, tensor: tensor)
            }
        }
    }

    /// What the activations are rounded to: the GPU always computes in BF16.
    public func activationLabel(_ precision: ActivationPrecision) -> String {
        switch self {
        case .cpu: precision.rawValue
        case .cuda: ActivationPrecision.bfloat16.rawValue
        }
    }
}
