/// Bad calibration input or options. `description` reads `path:line: message` when the fault has a place.
public struct CalibrationDataError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The file (or directory) at fault; nil for an error in the options alone.
    public var path: String?
    /// 1-based line in `path`; nil when the fault is not one line's.
    public var line: Int?
    public var message: String

    public init(path: String?, line: Int? = nil, message: String) {
        self.path = path
        self.line = line
        self.message = message
    }

    public var description: String {
        switch (path, line) {
        case let (path?, line?): return "\(path):\(line): \(message)"
        case let (path?, nil): return "\(path): \(message)"
        default: return "calibration data: \(message)"
        }
    }
}
