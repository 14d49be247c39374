import Foundation
import Testing
@testable import SafeTensors

/// Each way a file can be malformed gets the specific error, naming the file and (where relevant) the tensor.
/// Files are generated in a temporary directory.
@Suite struct MalformedFileTests {
    /// A header with one F32 [2] tensor entry given by `entry`, padded data of `dataByteCount`.
    private func openWithEntry(_ entry: String, named name: String = "x", dataByteCount: Int = 8,
                               expect kind: SafeTensorsError.Kind, tensor: String? = "x",
                               messageContains fragment: String? = nil,
                               sourceLocation: SourceLocation = #_sourceLocation) throws {
        try withTemporaryDirectory { directory in
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("bad.safetensors"),
                header: #"{"\#(name)":\#(entry)}"#, dataByteCount: dataByteCount)
            let error = expectSafeTensorsError(kind, path: path, tensor: tensor, sourceLocation: sourceLocation) {
                _ = try SafeTensorsFile(path: path)
            }
            if let fragment {
                #expect(error?.message.contains(fragment) == true, "\(String(describing: error))",
                        sourceLocation: sourceLocation)
            }
        }
    }

    @Test func fileShorterThanEightBytes() throws {
        try withTemporaryDirectory { directory in
            for length in [0, 7] {
                let path = directory.appendingPathComponent("short\(length).safetensors").path
                try Data(repeating: 0, count: length).write(to: URL(fileURLWithPath: path))
                let error = expectSafeTensorsError(.fileTooShort, path: path, tensor: nil) {
                    _ = try SafeTensorsFile(path: path)
                }
                #expect(error?.message.contains("\(length) bytes") == true)
            }
        }
    }

    @Test func headerLengthBeyondTheFile() throws {
        try withTemporaryDirectory { directory in
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("long.safetensors"), header: Array("{}".utf8), declaredLength: 3)
            let error = expectSafeTensorsError(.headerLength, path: path, tensor: nil) { _ = try SafeTensorsFile(path: path) }
            #expect(error?.message.contains("past the end") == true)
        }
    }

    @Test func absurdHeaderLength() throws {
        try withTemporaryDirectory { directory in
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("absurd.safetensors"), header: Array("{}".utf8),
                declaredLength: 100_000_001)
            let error = expectSafeTensorsError(.headerLength, path: path, tensor: nil) { _ = try SafeTensorsFile(path: path) }
            #expect(error?.message.contains("limit") == true)
            let huge = try writeRawSafeTensors(
                at: directory.appendingPathComponent("huge.safetensors"), header: Array("{}".utf8),
                declaredLength: UInt64.max)
            expectSafeTensorsError(.headerLength, path: huge, tensor: nil) { _ = try SafeTensorsFile(path: huge) }
        }
    }

    @Test func headerNotUTF8() throws {
        try withTemporaryDirectory { directory in
            var header = Array(#"{"__metadata__":{"k":""#.utf8)
            header += [0xC3, 0x28]  // an invalid two-byte sequence
            header += Array(#""}}"#.utf8)
            let path = try writeRawSafeTensors(at: directory.appendingPathComponent("latin.safetensors"), header: header)
            expectSafeTensorsError(.headerEncoding, path: path, tensor: nil) { _ = try SafeTensorsFile(path: path) }
        }
    }

    @Test(arguments: [#"{"x": "#, #"[1, 2]"#, #""text""#, #"{"a":1} {}"#, "", #"{"a":tru}"#, #"{'a':1}"#])
    func headerNotAJSONObject(header: String) throws {
        try withTemporaryDirectory { directory in
            let path = try writeRawSafeTensors(at: directory.appendingPathComponent("json.safetensors"), header: header)
            expectSafeTensorsError(.headerJSON, path: path, tensor: nil) { _ = try SafeTensorsFile(path: path) }
        }
    }

    @Test func entryNotAnObject() throws {
        try openWithEntry("5", expect: .malformedEntry, messageContains: "not an object")
        try openWithEntry(#"["F32"]"#, expect: .malformedEntry)
    }

    @Test func missingFields() throws {
        try openWithEntry(#"{"shape":[2],"data_offsets":[0,8]}"#, expect: .malformedEntry, messageContains: "'dtype'")
        try openWithEntry(#"{"dtype":"F32","data_offsets":[0,8]}"#, expect: .malformedEntry, messageContains: "'shape'")
        try openWithEntry(#"{"dtype":"F32","shape":[2]}"#, expect: .malformedEntry, messageContains: "'data_offsets'")
    }

    @Test func wrongTypedFields() throws {
        try openWithEntry(#"{"dtype":4,"shape":[2],"data_offsets":[0,8]}"#, expect: .malformedEntry,
                          messageContains: "'dtype'")
        try openWithEntry(#"{"dtype":"F32","shape":"2","data_offsets":[0,8]}"#, expect: .malformedEntry,
                          messageContains: "'shape'")
        try openWithEntry(#"{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}"#, expect: .malformedEntry,
                          messageContains: "'shape'")
        try openWithEntry(#"{"dtype":"F32","shape":[true],"data_offsets":[0,8]}"#, expect: .malformedEntry)
        try openWithEntry(#"{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}"#, expect: .malformedEntry,
                          messageContains: "'data_offsets'")
        try openWithEntry(#"{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}"#, expect: .malformedEntry)
        try openWithEntry(#"{"dtype":"F32","shape":[2],"data_offsets":{"begin":0}}"#, expect: .malformedEntry)
        try openWithEntry(#"{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}"#, expect: .malformedEntry,
                          messageContains: "twice")
    }

    @Test func unknownDType() throws {
        try openWithEntry(#"{"dtype":"F64","shape":[1],"data_offsets":[0,8]}"#, expect: .unknownDType,
                          messageContains: "'F64'")
        // dtype strings are case-sensitive.
        try openWithEntry(#"{"dtype":"f32","shape":[2],"data_offsets":[0,8]}"#, expect: .unknownDType)
    }

    @Test func negativeDimension() throws {
        try openWithEntry(#"{"dtype":"F32","shape":[2,-1],"data_offsets":[0,8]}"#, expect: .invalidShape,
                          messageContains: "-1")
    }

    @Test func shapeWhoseSizeOverflows() throws {
        try openWithEntry(
            #"{"dtype":"I64","shape":[4294967296,4294967296],"data_offsets":[0,8]}"#, expect: .invalidShape)
    }

    @Test func negativeOrReversedOffsets() throws {
        try openWithEntry(#"{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}"#, expect: .invalidOffsets)
        try openWithEntry(#"{"dtype":"F32","shape":[2],"data_offsets":[8,0]}"#, expect: .invalidOffsets,
                          messageContains: "[8, 0]")
    }

    @Test func offsetsOutsideTheDataSection() throws {
        try openWithEntry(#"{"dtype":"F32","shape":[2],"data_offsets":[4,12]}"#, dataByteCount: 8,
                          expect: .outOfBounds, messageContains: "8 bytes")
        try openWithEntry(#"{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}"#,
                          expect: .malformedEntry)
    }

    @Test func sizeDisagreesWithShape() throws {
        try openWithEntry(#"{"dtype":"F32","shape":[3],"data_offsets":[0,8]}"#, dataByteCount: 16,
                          expect: .sizeMismatch, messageContains: "12")
        // A 0-d tensor holds one element.
        try openWithEntry(#"{"dtype":"F32","shape":[],"data_offsets":[0,0]}"#, expect: .sizeMismatch)
    }

    @Test func overlappingTensors() throws {
        try withTemporaryDirectory { directory in
            let header = #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#
                + #""b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("overlap.safetensors"), header: header, dataByteCount: 12)
            let error = expectSafeTensorsError(.overlap, path: path, tensor: "b") { _ = try SafeTensorsFile(path: path) }
            #expect(error?.message.contains("'a'") == true)

            // A tensor nested inside a longer one is caught too, whatever the header order.
            let nested = #"{"inner":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"#
                + #""outer":{"dtype":"U8","shape":[10],"data_offsets":[0,10]},"#
                + #""after":{"dtype":"U8","shape":[2],"data_offsets":[10,12]}}"#
            let nestedPath = try writeRawSafeTensors(
                at: directory.appendingPathComponent("nested.safetensors"), header: nested, dataByteCount: 12)
            expectSafeTensorsError(.overlap, path: nestedPath, tensor: "inner") { _ = try SafeTensorsFile(path: nestedPath) }
        }
    }

    @Test func duplicateTensorName() throws {
        try withTemporaryDirectory { directory in
            let header = #"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"#
                + #""a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("dup.safetensors"), header: header, dataByteCount: 2)
            expectSafeTensorsError(.duplicateName, path: path, tensor: "a") { _ = try SafeTensorsFile(path: path) }
        }
    }

    @Test(arguments: [#"{"__metadata__":"pt"}"#, #"{"__metadata__":{"format":1}}"#,
                      #"{"__metadata__":{"a":null}}"#, #"{"__metadata__":{"a":"1","a":"2"}}"#,
                      #"{"__metadata__":["format","pt"]}"#])
    func metadataNotAnObjectOfStrings(header: String) throws {
        try withTemporaryDirectory { directory in
            let path = try writeRawSafeTensors(at: directory.appendingPathComponent("meta.safetensors"), header: header)
            let error = expectSafeTensorsError(.metadata, path: path, tensor: nil) { _ = try SafeTensorsFile(path: path) }
            #expect(error?.message.contains("__metadata__") == true)
        }
    }

    @Test func missingFileAndDirectory() throws {
        try withTemporaryDirectory { directory in
            let missing = directory.appendingPathComponent("absent.safetensors").path
            expectSafeTensorsError(.io, path: missing, tensor: nil) { _ = try SafeTensorsFile(path: missing) }
            expectSafeTensorsError(.io, path: directory.path, tensor: nil) { _ = try SafeTensorsFile(path: directory.path) }
        }
    }

    @Test func unknownTensorName() throws {
        let path = Fixtures.path("nvfp4-golden.safetensors")
        let file = try SafeTensorsFile(path: path)
        #expect(!file.contains("nope"))
        expectSafeTensorsError(.unknownTensor, path: path, tensor: "nope") { _ = try file.info("nope") }
        expectSafeTensorsError(.unknownTensor, path: path, tensor: "nope") { _ = try file.floats("nope") }
        expectSafeTensorsError(.unknownTensor, path: path, tensor: "nope") { _ = try file.data("nope") }
        expectSafeTensorsError(.unknownTensor, path: path, tensor: "nope") { _ = try file.withBytes("nope") { $0.count } }
    }

    // MARK: - Lenient reading, strict tiling

    @Test func gapsAreReadableButFailTiling() throws {
        try withTemporaryDirectory { directory in
            let header = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"#
                + #""b":{"dtype":"U8","shape":[2],"data_offsets":[4,6]}}"#
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("gap.safetensors"), header: Array(header.utf8),
                data: [1, 2, 0, 0, 3, 4])
            let file = try SafeTensorsFile(path: path)
            #expect(file.tensorNames == ["a", "b"])
            #expect(try file.data("b") == Data([3, 4]))
            let error = expectSafeTensorsError(.tiling, path: path, tensor: "b") { try file.validateTiling() }
            #expect(error?.message.contains("gap") == true)
        }
    }

    @Test func tensorsNotStartingAtZeroFailTiling() throws {
        try withTemporaryDirectory { directory in
            let header = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("late.safetensors"), header: header, dataByteCount: 4)
            let file = try SafeTensorsFile(path: path)
            expectSafeTensorsError(.tiling, path: path, tensor: "a") { try file.validateTiling() }
        }
    }

    @Test func trailingBytesFailTiling() throws {
        try withTemporaryDirectory { directory in
            let header = #"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("trailing.safetensors"), header: header, dataByteCount: 3)
            let file = try SafeTensorsFile(path: path)
            let error = expectSafeTensorsError(.tiling, path: path, tensor: nil) { try file.validateTiling() }
            #expect(error?.message.contains("\(file.fileSize)") == true)
            let empty = try writeRawSafeTensors(
                at: directory.appendingPathComponent("empty.safetensors"), header: "{}", dataByteCount: 1)
            expectSafeTensorsError(.tiling, path: empty, tensor: nil) { try SafeTensorsFile(path: empty).validateTiling() }
        }
    }

    @Test func zeroSizeTensorsOverlapNothingAndTile() throws {
        try withTemporaryDirectory { directory in
            let header = #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"#
                + #""empty":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},"#
                + #""b":{"dtype":"U8","shape":[1],"data_offsets":[4,5]}}"#
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("zero.safetensors"), header: header, dataByteCount: 5)
            let file = try SafeTensorsFile(path: path)
            #expect(file.tensorNames == ["a", "empty", "b"])
            #expect(try file.floats("empty") == [])
            #expect(try file.info("empty").elementCount == 0)
            try file.validateTiling()
        }
    }

    @Test func unpaddedHeaderGivesUnalignedDataThatStillReadsExactly() throws {
        try withTemporaryDirectory { directory in
            // Header length 3 mod 8 makes every tensor start at an odd address.
            var header = #"{"f":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#
                + #""h":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]},"#
                + #""g":{"dtype":"F16","shape":[1],"data_offsets":[12,14]}}"#
            while header.utf8.count % 8 != 3 { header += " " }
            var data: [UInt8] = []
            for value: Float in [1.5, -0.25] { withUnsafeBytes(of: value.bitPattern.littleEndian) { data += $0 } }
            data += [0x80, 0x3F, 0x49, 0xC0]  // BF16 1.0, -3.140625
            data += [0x00, 0x3C]  // F16 1.0
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("odd.safetensors"), header: Array(header.utf8), data: data)
            let file = try SafeTensorsFile(path: path)
            #expect(file.dataSectionOffset % 2 == 1)
            #expect(try file.floats("f") == [1.5, -0.25])
            #expect(try file.floats("h") == [1.0, -3.140625])
            #expect(try file.floats("g") == [1.0])
            try file.validateTiling()
        }
    }

    @Test func escapedNamesAndWhitespaceAreAccepted() throws {
        try withTemporaryDirectory { directory in
            let header = "\n { \"caf\\u00e9.\\\"w\\\"\" : { \"shape\" : [ 1 ] , \"dtype\" : \"U8\" , "
                + "\"data_offsets\" : [ 0 , 1 ] , \"extra\" : null } }   "
            let path = try writeRawSafeTensors(
                at: directory.appendingPathComponent("spaced.safetensors"), header: header, dataByteCount: 1)
            let file = try SafeTensorsFile(path: path)
            #expect(file.tensorNames == ["café.\"w\""])
            #expect(try file.data("café.\"w\"") == Data([0xAB]))
        }
    }
}

@Suite struct ErrorDescriptionTests {
    @Test func descriptionNamesFileThenTensor() {
        let withTensor = SafeTensorsError(path: "model.safetensors", tensor: "x.weight", message: "bad offsets")
        #expect(withTensor.description == "model.safetensors: tensor 'x.weight': bad offsets")
        #expect(withTensor.kind == .other)
        let fileOnly = SafeTensorsError(path: "/m/model.safetensors", message: "too short", kind: .fileTooShort)
        #expect(fileOnly.description == "/m/model.safetensors: too short")
        #expect(fileOnly != SafeTensorsError(path: "/m/model.safetensors", message: "too short"))
    }
}
