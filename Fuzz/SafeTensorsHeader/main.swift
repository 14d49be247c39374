// libFuzzer target: the safetensors header parser over a whole file image (8-byte length, JSON header, data).
// Invariants: no input traps; an accepted header has no tensor outside the data section, no two non-empty tensors
// overlap, every tensor's byte span matches its dtype and shape, and names are unique.
import FuzzDriver
import SafeTensors

runFuzzer(fuzz)

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    guard let header = try? SafeTensorsFile.parseHeader(fileImage: bytes) else { return }
    let dataSectionSize = bytes.count - 8 - header.headerLength
    precondition(header.headerLength >= 0 && dataSectionSize >= 0, "the header runs past the file")
    var names = Set<String>()
    var previousEnd = 0
    for info in header.tensors {
        precondition(names.insert(info.name).inserted, "tensor '\(info.name)' appears twice")
        let offsets = info.dataOffsets
        precondition(offsets.lowerBound >= 0 && offsets.upperBound <= dataSectionSize,
                     "tensor '\(info.name)' at \(offsets) lies outside the \(dataSectionSize)-byte data section")
        var count = 1
        for dimension in info.shape { count *= dimension }
        precondition(count * info.dtype.byteSize == offsets.count, "tensor '\(info.name)' spans \(offsets.count) bytes")
        // Sorted by offset: each non-empty tensor begins at or after the end of every earlier one.
        if !offsets.isEmpty {
            precondition(offsets.lowerBound >= previousEnd, "tensor '\(info.name)' at \(offsets) overlaps an earlier one")
            previousEnd = offsets.upperBound
        }
    }
}
