import Testing
import SafeTensors

@Suite struct SHA256HasherTests {
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
        ("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"),
    ])
    func knownAnswerVectors(message: String, digest: String) {
        #expect(SHA256Hasher.hexDigest(of: Array(message.utf8)) == digest)
    }

    @Test func millionAs() {
        #expect(SHA256Hasher.hexDigest(of: [UInt8](repeating: 0x61, count: 1_000_000))
            == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    /// Lengths around the 55/56/64-byte padding boundaries.
    @Test(arguments: [
        (55, "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072"),
        (56, "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e"),
        (63, "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2"),
        (64, "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c"),
        (65, "9537c5fdf120482f7d58d25e9ed583f52c02b4e304ea814db1633ad565aed7e9"),
    ])
    func paddingBoundaries(length: Int, digest: String) {
        #expect(SHA256Hasher.hexDigest(of: [UInt8](repeating: 0x78, count: length)) == digest)
    }

    @Test func chunkedUpdatesEqualOneShot() {
        let bytes = (0..<768).map { UInt8($0 % 256) }
        var hasher = SHA256Hasher()
        var offset = 0
        for chunk in [1, 63, 64, 65, 7, 300, 268] {
            hasher.update(bytes[offset..<offset + chunk])
            offset += chunk
        }
        #expect(offset == bytes.count)
        let digest = SHA256Hasher.hex(hasher.finalize())
        #expect(digest == "f3a25aa93aa2fbba28d79260535bbd6a5eb0fc1c24a8b0f04e12b484c1dfe363")
        #expect(digest == SHA256Hasher.hexDigest(of: bytes))
    }
}
