import LlamaModel

/// What a forward over resident states observed: the four amax values and the first row whose output is not finite
/// (nil when every output is finite), so the caller can name the sample without reading the states back.
public struct ResidentForwardResult: Sendable, Equatable {
    public var amax: ObservedAmax
    public var firstNonFiniteRow: Int?

    public init(amax: ObservedAmax, firstNonFiniteRow: Int?) {
        self.amax = amax
        self.firstNonFiniteRow = firstNonFiniteRow
    }
}

/// Hidden states kept in a backend's own memory between layers.
///
/// A layer-streaming calibration pushes every chunk through layer L before layer L+1. A GPU backend that had to
/// take f32 states from the host and give them back for every (layer, chunk) would spend more time on the bus than
/// on the layer. So a backend may keep states resident: ``makeResident(_:batch:)`` once when a chunk enters the range,
/// ``enqueueForward(layer:states:batch:)`` for each layer (it may return before the work is done, so that the
/// caller can load the next layer meanwhile), ``completeForward(_:)`` for the amax, and ``hostStates(_:)`` once at
/// the end. Results are bit-identical to ``ComputeBackend/forward(layer:hidden:batch:inputTransform:)`` on host states.
///
/// Backends without memory of their own (the CPU) keep the defaults below: no resident capacity, so callers use
/// host states.
extension ComputeBackend where ResidentStates == HiddenStates, PendingForward == ResidentForwardResult {
    public func residentStateCapacity() throws -> Int { 0 }

    public func residentStateBytes(tokens: Int) -> Int { tokens * config.hiddenSize * MemoryLayout<Float>.size }

    public func makeResident(_ hidden: HiddenStates, batch: SequenceBatch) throws -> HiddenStates { hidden }

    public func hostStates(_ states: HiddenStates) throws -> HiddenStates { states }

    public func enqueueForward(layer: LoadedLayer, states: inout HiddenStates, batch: SequenceBatch) throws -> ResidentForwardResult {
        let amax = try forward(layer: layer, hidden: &states, batch: batch, inputTransform: nil)
        let width = config.hiddenSize
        let row = states.values.withUnsafeBufferPointer { values -> Int? in
            guard let index = values.firstIndex(where: { !$0.isFinite }) else { return nil }
            return index / width
        }
        return ResidentForwardResult(amax: amax, firstNonFiniteRow: row)
    }

    public func completeForward(_ pending: ResidentForwardResult) throws -> ResidentForwardResult { pending }
}
