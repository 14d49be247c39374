import NVFP4

// Test statistics written as literals (`["qkv": 2.5]`); the product never converts a bare number into an amax.
extension ActivationAmax: ExpressibleByFloatLiteral, ExpressibleByIntegerLiteral {
    public init(floatLiteral value: Float) { self.init(value) }
    public init(integerLiteral value: Int) { self.init(Float(value)) }
}
