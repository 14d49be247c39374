/// The release every binary of this build reports (`--version`, a worker's registration).
public enum SoftwareVersion {
    public static let number = "0.1.0"
    /// As workers register it and `coordctl workers` shows it.
    public static let full = "NVFP4Cluster \(number)"
}
