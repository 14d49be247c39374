import CUDABackend
import CUDARuntime
import ComputeBackend
import Foundation
import LlamaModel
import NVFP4
import Testing

@Suite struct CUDAKernelSourceTests {
    @Test func theKernelSourceIsBundledAndDefinesEveryKernelTheBackendLaunches() throws {
        let source = try CUDAKernels.source()
        for name in ["nvfp4_quantize", "bf16_amax", "f32_to_bf16", "bf16_to_f32", "rmsnorm_bf16", "rope_bf16", "swiglu_bf16",
                     "residual_add_bf16", "attention_d32", "attention_d64", "attention_d128", "gptq_diagonal", "gptq_prepare_f64",
                     "gptq_extract_upper", "gptq_gather_bf16", "gptq_gather_f32", "gptq_block", "gptq_pack"] {
            #expect(source.contains("extern \"C\" __global__ void \(name)(") || source.contains(") \(name)("), "kernel \(name)")
        }
        // No CUDA header is needed, so NVRTC compiles it without an SDK include path.
        #expect(!source.contains("#include"))
    }

    @Test func theCacheKeyOfTheKernelsFollowsSourceAndArchitecture() throws {
        let source = try CUDAKernels.source()
        let hopper = KernelCacheKey(source: source, architecture: "sm_90", compilerVersion: "13.0")
        let blackwell = KernelCacheKey(source: source, architecture: "sm_121", compilerVersion: "13.0")
        #expect(hopper.sourceHash == blackwell.sourceHash)
        #expect(hopper.fileName != blackwell.fileName)
        #expect(hopper != KernelCacheKey(source: source + "\n", architecture: "sm_90", compilerVersion: "13.0"))
    }

    /// Runs where NVRTC can be loaded (NVFP4_LIBNVRTC or a CUDA install); NVRTC needs no GPU.
    @Test(.enabled(if: (try? NVRTC()) != nil, "NVRTC is not installed here"))
    func theKernelsCompileForHopperAndBlackwell() throws {
        let nvrtc = try NVRTC()
        let source = try CUDAKernels.source()
        for architecture in ["sm_90", "sm_120"] {
            let cubin = try nvrtc.compileCubin(source: source, name: CUDAKernels.sourceName, architecture: architecture)
            #expect(cubin.starts(with: [0x7F, 0x45, 0x4C, 0x46]), "an ELF cubin for \(architecture)")
        }
    }

    @Test(.enabled(if: (try? NVRTC()) != nil, "NVRTC is not installed here"))
    func aCompileErrorCarriesTheLog() throws {
        let nvrtc = try NVRTC()
        do {
            _ = try nvrtc.compileCubin(source: "extern \"C\" __global__ void broken() { undeclared_name = 1; }", name: "broken.cu",
                                       architecture: "sm_90")
            Issue.record("a broken kernel compiled")
        } catch let CUDAError.compilationFailed(source, architecture, log) {
            #expect(source == "broken.cu" && architecture == "sm_90")
            #expect(log.contains("undeclared_name"))
        }
    }
}

@Suite struct CUDABackendShapeTests {
    static func config(headDim: Int = 64, heads: Int = 9, keyValueHeads: Int = 3, hidden: Int = 576, intermediate: Int = 1536) throws -> LlamaConfig {
        let json = """
            {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": \(hidden),
             "intermediate_size": \(intermediate), "num_attention_heads": \(heads), "num_key_value_heads": \(keyValueHeads),
             "head_dim": \(headDim), "num_hidden_layers": 2, "vocab_size": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": true}
            """
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("cuda-config-\(UUID().uuidString).json")
        try Data(json.utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        return try LlamaConfig.load(path: url.path)
    }

    @Test func smolLM2And70BShapesAreAccepted() throws {
        try CUDABackend.validate(try Self.config())
        try CUDABackend.validate(try Self.config(headDim: 128, heads: 64, keyValueHeads: 8, hidden: 8192, intermediate: 28672))
    }

    @Test func anUnsupportedHeadDimIsNamed() throws {
        #expect(throws: CUDABackendError.unsupportedHeadDim(96)) {
            try CUDABackend.validate(try Self.config(headDim: 96, heads: 6, hidden: 576))
        }
        #expect(CUDABackendError.unsupportedHeadDim(96).description.contains("head_dim 96"))
    }

    @Test func anIntermediateSizeOffTheBlockGridIsNamed() throws {
        #expect(throws: CUDABackendError.self) { try CUDABackend.validate(try Self.config(intermediate: 1544)) }
        do {
            try CUDABackend.validate(try Self.config(intermediate: 1544))
        } catch {
            #expect("\(error)".contains("intermediate_size = 1544"))
        }
    }

    @Test func tokensPerPassDividesFreeMemoryByThePerTokenFootprint() throws {
        let config = try Self.config(headDim: 128, heads: 64, keyValueHeads: 8, hidden: 8192, intermediate: 28672)
        // 2·(3·8192 + 10240 + 8192 + 3·28672) + 4·8192 + 8 bytes per token.
        let perToken = 2 * (3 * 8192 + 10240 + 8192 + 3 * 28672) + 4 * 8192 + 8
        #expect(CUDABackend.tokensPerPass(config: config, freeBytes: perToken * 1000) == 1000)
        #expect(CUDABackend.tokensPerPass(config: config, freeBytes: 10) == 1)
    }

    @Test func passesSplitABatchBySamplesWithinTheTokenLimit() throws {
        let batch = try SequenceBatch(tokenCounts: [300, 500, 200, 900, 100])
        #expect(CUDABackend.passes(batch, maxTokens: 1000) == [0..<3, 3..<5])
        #expect(CUDABackend.passes(batch, maxTokens: 10_000) == [0..<5])
        // A sample longer than the limit runs alone.
        #expect(CUDABackend.passes(batch, maxTokens: 400) == [0..<1, 1..<2, 2..<3, 3..<4, 4..<5])
    }
}

@Suite struct CUDAQuantizerArgumentTests {
    @Test func argumentChecksMatchTheCPUQuantizer() {
        #expect(throws: NVFP4Error.columnsNotMultipleOf16(tensor: "w", cols: 24)) {
            try CUDANVFP4Quantizer.check(rows: 2, cols: 24, count: 48, weightScale2: 1, tensor: "w")
        }
        #expect(throws: NVFP4Error.sizeMismatch(tensor: "w", expected: 64, actual: 60)) {
            try CUDANVFP4Quantizer.check(rows: 4, cols: 16, count: 60, weightScale2: 1, tensor: "w")
        }
        #expect(throws: NVFP4Error.allZero(tensor: "w")) {
            try CUDANVFP4Quantizer.check(rows: 4, cols: 16, count: 64, weightScale2: 0, tensor: "w")
        }
        #expect(throws: Never.self) { try CUDANVFP4Quantizer.check(rows: 4, cols: 16, count: 64, weightScale2: 0.5, tensor: "w") }
    }
}

@Suite struct CUDADeviceOpeningTests {
    @Test func openingWithAMissingDriverFailsWithTheLibraryNamed() throws {
        let path = "/nonexistent/\(UUID().uuidString)/libcuda.so.1"
        let locator = CUDALibraryLocator(environment: ["NVFP4_LIBCUDA": path])
        do {
            _ = try CUDADevice(ordinal: 0, locator: locator)
            Issue.record("a device opened through \(path)")
        } catch let error as CUDAError {
            guard case .libraryNotFound(let library, _) = error else { Issue.record("\(error)"); return }
            #expect(library == "CUDA driver")
            #expect(error.description.contains(path))
        }
    }
}
