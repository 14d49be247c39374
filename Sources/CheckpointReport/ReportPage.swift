import Foundation
import JobModel

extension CheckpointReport {
    /// The self-contained page: the quality report, a per-layer chart of the weight error (worst and mean) and of the
    /// largest activation amax, the worst Linears, and every Linear's figures. Inline CSS and SVG; no script, no
    /// network, so it opens anywhere (a browser, an air-gapped box, a CI artifact).
    public func html(worst count: Int = 10) -> String {
        let summaries = layers
        let errorChart = barChart(title: "Weight quantization error per layer (‖W − Q(W)‖/‖W‖; bar: worst Linear, dot: mean)",
                                  values: summaries.map { ($0.layer, $0.maxWeightRelativeError, $0.meanWeightRelativeError) },
                                  format: percent, id: "weight-error")
        let outputChart = linears.contains { $0.outputRelativeError != nil } ? barChart(
            title: "Output error per layer on \(outputErrorInputs.phrase) (‖XWᵀ − X̃Q(W)ᵀ‖/‖XWᵀ‖; bar: worst Linear, dot: mean)",
            values: summaries.map { summary in
                let errors = linears.filter { $0.layer == summary.layer }.compactMap(\.outputRelativeError)
                return (summary.layer, errors.max() ?? 0, errors.isEmpty ? nil : errors.reduce(0, +) / Double(errors.count))
            }, format: percent, id: "output-error") : ""
        let amaxChart = barChart(title: "Largest activation amax per layer (max |x| into its Linears)",
                                 values: summaries.map { ($0.layer, Double($0.maxActivationAmax ?? 0), nil) },
                                 format: { String(format: "%.4g", $0) }, id: "activation-amax")
        let worstRows = worst(count).enumerated().map { rank, linear in
            "<tr><td>\(rank + 1)</td>" + row(linear) + "</tr>"
        }.joined(separator: "\n")
        let allRows = linears.map { "<tr>" + row($0, withLayer: true) + "</tr>" }.joined(separator: "\n")
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8">
            <title>NVFP4 checkpoint report: \(escape(directory.lastPathComponent))</title>
            <style>
            body { font-family: system-ui, sans-serif; margin: 2em; color: #1d2330; background: #fff; }
            h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 2em; }
            table { border-collapse: collapse; font-size: 0.9em; }
            td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #dde; text-align: left; }
            td.number { text-align: right; font-variant-numeric: tabular-nums; }
            .quality { padding: 0.8em 1em; background: #eef3fb; border-left: 4px solid #3b6fd8; }
            svg text { font-size: 11px; fill: #1d2330; }
            </style></head><body>
            <h1>NVFP4 checkpoint report</h1>
            <p><code>\(escape(directory.path))</code>: \(escape(scheme)), \(linears.filter { !$0.keptUnquantized }.count) quantized Linears\(linears.contains(where: \.keptUnquantized) ? " and \(linears.filter(\.keptUnquantized).count) kept unquantized (--exclude)" : "") in \(summaries.count) layers\(samples.map { ", calibrated on \($0) samples" } ?? "")\(device.map { " (\(escape($0)))" } ?? "").</p>
            <p class="quality" id="quality">Quality: \(escape(qualitySentence))</p>
            <h2>Per layer</h2>
            \(errorChart)
            \(outputChart)
            \(amaxChart)
            <h2>The \(min(count, linears.count)) Linears with the largest \(ranksByOutputError ? "output error on \(outputErrorInputs.phrase)" : "weight error")</h2>
            <table id="worst"><tr><th>rank</th><th>Linear</th><th>weight error</th><th>output error</th><th>weight amax</th><th>activation amax</th></tr>
            \(worstRows)
            </table>
            <h2>Every Linear</h2>
            <table id="linears"><tr><th>layer</th><th>Linear</th><th>weight error</th><th>output error</th><th>weight amax</th><th>activation amax</th></tr>
            \(allRows)
            </table>
            </body></html>

            """
    }

    private func row(_ linear: LinearQuality, withLayer: Bool = false) -> String {
        (withLayer ? "<td class=\"number\">\(linear.layer)</td>" : "")
            + "<td>\(escape(linear.name))\(linear.keptUnquantized ? " <em>(kept unquantized)</em>" : "")</td><td class=\"number\">\(percent(linear.weightRelativeError))</td>"
            + "<td class=\"number\">\(linear.outputRelativeError.map(percent) ?? "-")</td>"
            + "<td class=\"number\">\(amaxText(linear.weightAmax))</td><td class=\"number\">\(amaxText(linear.activationAmax))</td>"
    }

    /// One bar per layer (height ∝ value), an optional dot per layer, the largest value labelled on the axis.
    private func barChart(title: String, values: [(layer: Int, bar: Double, dot: Double?)], format: (Double) -> String,
                          id: String) -> String {
        let width = 900.0, height = 220.0, left = 60.0, bottom = 24.0, top = 12.0
        let top_value = max(values.map(\.bar).max() ?? 0, values.compactMap(\.dot).max() ?? 0)
        let scale = top_value > 0 ? (height - bottom - top) / top_value : 0
        let step = (width - left - 10) / Double(max(values.count, 1))
        var shapes: [String] = []
        for (index, value) in values.enumerated() {
            let x = left + Double(index) * step
            let barHeight = value.bar * scale
            shapes.append(String(format: "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#3b6fd8\"><title>layer %d: %@</title></rect>",
                                 x + step * 0.1, height - bottom - barHeight, step * 0.8, barHeight, value.layer, format(value.bar)))
            if let dot = value.dot {
                shapes.append(String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#e07b24\"/>", x + step / 2, height - bottom - dot * scale))
            }
            if values.count <= 40 || value.layer % 5 == 0 {
                shapes.append(String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>", x + step / 2, height - 8, value.layer))
            }
        }
        return """
            <figure id="\(id)"><figcaption>\(escape(title))</figcaption>
            <svg width="\(Int(width))" height="\(Int(height))" viewBox="0 0 \(Int(width)) \(Int(height))" role="img">
            <line x1="\(left)" y1="\(height - bottom)" x2="\(width - 10)" y2="\(height - bottom)" stroke="#889"/>
            <line x1="\(left)" y1="\(top)" x2="\(left)" y2="\(height - bottom)" stroke="#889"/>
            <text x="\(left - 6)" y="\(top + 4)" text-anchor="end">\(escape(format(top_value)))</text>
            <text x="\(left - 6)" y="\(height - bottom)" text-anchor="end">0</text>
            \(shapes.joined(separator: "\n"))
            </svg></figure>
            """
    }
}

func escape(_ text: String) -> String {
    text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
}
