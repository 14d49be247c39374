import Testing
@testable import ActorSystem
