import ClusterMetrics
import ClusterState
import CoreMetrics
import JobModel
import Logging

/// coordd's job gauges, recorded through swift-metrics (see ``MetricName``).
enum CoordinatorMetrics {
    /// Makes coordd's counters and histogram exist (at 0), so that a scrape shows them before the first job.
    static func registerAll() {
        for name in [MetricName.jobsSubmitted, .layersCalibrated, .layersExported] { _ = name.counter() }
        _ = MetricName.exportLayerSeconds.timer()
    }

    /// Sets `nvfp4_jobs{state}` for every state to the number of jobs the store holds in it. Called after every change
    /// of a job's state, so the gauge follows the store (a restarted coordd starts from what it kept).
    static func recordJobStates(_ store: ClusterStateStore, logger: Logger) {
        let jobs: [JobRecord]
        do {
            jobs = try store.listJobs()
        } catch {
            logger.debug("job-state metrics not updated: \(error)")
            return
        }
        var counts = Dictionary(uniqueKeysWithValues: JobState.allCases.map { ($0, 0) })
        for job in jobs { counts[job.state, default: 0] += 1 }
        for (state, count) in counts {
            MetricName.jobs.gauge(state.rawValue).record(count)
        }
    }
}
