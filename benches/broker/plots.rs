//! The benchmark's plots, as SVG files next to its JSON: Rivulet's throughput as a share of
//! its baseline, p99 latency beside the baseline's, and fan-out by trigger count.

use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::{Channel, FilterKind, Row, System, e2e_rate, percentile_ms};

const WIDTH: u32 = 1200;
const RIVULET: RGBColor = RGBColor(31, 119, 180);
const BASELINE: RGBColor = RGBColor(160, 160, 160);
const AIM: RGBColor = RGBColor(214, 39, 40);

pub fn write_all(dir: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    throughput(&dir.join("throughput.svg"), rows, title)?;
    latency(&dir.join("latency.svg"), rows, title)?;
    fanout(&dir.join("fanout.svg"), rows, title)
}

fn failed(what: &str) -> impl Fn(String) -> String + '_ {
    move |error| format!("plotting {what}: {error}")
}

/// Short axis label of a (channel, payload) group.
fn group_label(channel: Channel, payload: usize) -> String {
    let size = if payload >= 1024 && payload.is_multiple_of(1024) {
        format!("{}K", payload / 1024)
    } else {
        format!("{payload}B")
    };
    format!("{} {size}", channel.name())
}

/// The (channel, payload) pairs of `section` that have both a Rivulet and a baseline row.
fn pairs<'a>(rows: &'a [Row], section: &str) -> Vec<(&'a Row, &'a Row)> {
    rows.iter()
        .filter(|row| row.section == section && row.system == System::Rivulet)
        .filter_map(|rivulet| {
            rows.iter()
                .find(|row| {
                    row.describes(section, rivulet.channel, System::Baseline, rivulet.payload)
                })
                .map(|baseline| (rivulet, baseline))
        })
        .collect()
}

/// Two panels, ingress and end to end: Rivulet's events per second as a percentage of its
/// baseline's, with the 70% aim.
fn throughput(path: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, 900)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| failed("throughput")(e.to_string()))?;
    let root = root
        .titled(
            &format!("Rivulet throughput as % of baseline — {title}"),
            ("sans-serif", 18),
        )
        .map_err(|e| failed("throughput")(e.to_string()))?;
    let panels = root.split_evenly((2, 1));
    let sections = [
        (
            "ingress",
            "ingress: Rivulet / bare handler or raw publish",
            (|row: &Row| row.result.accepted_per_second) as fn(&Row) -> f64,
        ),
        (
            "e2e-throughput",
            "end to end: Rivulet / raw publish + consume (memory, embedded: / bare handler)",
            e2e_rate as fn(&Row) -> f64,
        ),
    ];
    for (panel, (section, caption, figure)) in panels.iter().zip(sections) {
        let bars: Vec<(String, f64)> = pairs(rows, section)
            .into_iter()
            .map(|(rivulet, baseline)| {
                let base = figure(baseline);
                let share = if base > 0.0 {
                    figure(rivulet) * 100.0 / base
                } else {
                    0.0
                };
                (group_label(rivulet.channel, rivulet.payload), share)
            })
            .collect();
        if bars.is_empty() {
            continue;
        }
        let top = bars.iter().map(|(_, v)| *v).fold(120.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..top)
            .map_err(|e| failed("throughput")(e.to_string()))?;
        let labels: Vec<String> = bars.iter().map(|(label, _)| label.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len())
            .x_label_formatter(&|value| match value {
                SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc("% of baseline")
            .draw()
            .map_err(|e| failed("throughput")(e.to_string()))?;
        chart
            .draw_series(bars.iter().enumerate().map(|(i, (_, share))| {
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *share),
                    ],
                    RIVULET.filled(),
                );
                bar.set_margin(0, 0, 12, 12);
                bar
            }))
            .map_err(|e| failed("throughput")(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                [
                    (SegmentValue::Exact(0), 70.0),
                    (SegmentValue::Exact(bars.len()), 70.0),
                ],
                AIM.stroke_width(2),
            ))
            .map_err(|e| failed("throughput")(e.to_string()))?
            .label("aim: 70%")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], AIM.stroke_width(2)));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| failed("throughput")(e.to_string()))?;
    }
    root.present()
        .map_err(|e| failed("throughput")(e.to_string()))
}

/// p99 latency at the fixed rate, Rivulet beside its baseline, on a log scale.
fn latency(path: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    let pairs = pairs(rows, "e2e-latency");
    let p99 = |row: &Row| percentile_ms(row.latency(), 0.99).unwrap_or(0.0).max(0.01);
    let root = SVGBackend::new(path, (WIDTH, 500)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| failed("latency")(e.to_string()))?;
    if pairs.is_empty() {
        return root.present().map_err(|e| failed("latency")(e.to_string()));
    }
    let top = pairs
        .iter()
        .flat_map(|(rivulet, baseline)| [p99(rivulet), p99(baseline)])
        .fold(1.0, f64::max)
        * 2.0;
    // Three segments per group: baseline, Rivulet, gap.
    let segments = pairs.len() * 3;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "p99 latency at a fixed rate below saturation (send → subscriber; bare handler: round trip) — {title}"
            ),
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((0..segments).into_segmented(), (0.01..top).log_scale())
        .map_err(|e| failed("latency")(e.to_string()))?;
    let labels: Vec<String> = pairs
        .iter()
        .map(|(rivulet, _)| {
            format!(
                "{} @{}",
                group_label(rivulet.channel, rivulet.payload),
                rivulet.rate.unwrap_or_default()
            )
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(segments)
        .x_label_formatter(&|value| match value {
            // Under the group's Rivulet bar.
            SegmentValue::CenterOf(i) if i % 3 == 1 => {
                labels.get(i / 3).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .y_desc("ms (log scale)")
        .draw()
        .map_err(|e| failed("latency")(e.to_string()))?;
    for (offset, color, name) in [(0, BASELINE, "baseline"), (1, RIVULET, "Rivulet")] {
        chart
            .draw_series(
                pairs
                    .iter()
                    .enumerate()
                    .map(|(group, (rivulet, baseline))| {
                        let row = if offset == 0 { baseline } else { rivulet };
                        let at = group * 3 + offset;
                        let mut bar = Rectangle::new(
                            [
                                (SegmentValue::Exact(at), 0.01),
                                (SegmentValue::Exact(at + 1), p99(row)),
                            ],
                            color.filled(),
                        );
                        bar.set_margin(0, 0, 2, 2);
                        bar
                    }),
            )
            .map_err(|e| failed("latency")(e.to_string()))?
            .label(name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| failed("latency")(e.to_string()))?;
    root.present().map_err(|e| failed("latency")(e.to_string()))
}

/// Events per second by trigger count, one line per (channel, filter kind).
fn fanout(path: &Path, rows: &[Row], title: &str) -> Result<(), String> {
    let root = SVGBackend::new(path, (WIDTH, 500)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| failed("fan-out")(e.to_string()))?;
    let points = |channel: Channel, kind: FilterKind| -> Vec<(f64, f64)> {
        let prefix = format!("{}, {}, ", channel.name(), kind.name());
        rows.iter()
            .filter(|row| row.section == "fanout")
            .filter_map(|row| {
                let count = row
                    .label
                    .strip_prefix(&prefix)?
                    .strip_suffix(" triggers")?
                    .parse::<f64>()
                    .ok()?;
                Some((count, row.result.accepted_per_second))
            })
            .collect()
    };
    let lines: Vec<(String, Vec<(f64, f64)>)> = crate::FANOUT_RUNS
        .iter()
        .flat_map(|(kind, channels)| {
            channels.iter().map(move |channel| {
                (
                    format!("{}, {}", channel.name(), kind.name()),
                    points(*channel, *kind),
                )
            })
        })
        .filter(|(_, points)| !points.is_empty())
        .collect();
    if lines.is_empty() {
        return root.present().map_err(|e| failed("fan-out")(e.to_string()));
    }
    let max_count = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(x, _)| *x))
        .fold(10.0, f64::max);
    let top = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|(_, y)| *y))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("fan-out: events/s with N non-matching triggers + 1 matching — {title}"),
            ("sans-serif", 15),
        )
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..max_count * 1.5).log_scale(), 0.0..top)
        .map_err(|e| failed("fan-out")(e.to_string()))?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .x_desc("non-matching triggers (log scale)")
        .y_desc("events/s")
        .draw()
        .map_err(|e| failed("fan-out")(e.to_string()))?;
    for (index, (name, points)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| failed("fan-out")(e.to_string()))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| failed("fan-out")(e.to_string()))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| failed("fan-out")(e.to_string()))?;
    root.present().map_err(|e| failed("fan-out")(e.to_string()))
}

/// The delivery section: end-to-end events per second of every path, one panel per payload,
/// baselines in grey, with the forwarding proxy's rate scaled by the aims as marks.
pub fn delivery(
    path: &Path,
    rows: &[crate::delivery::DeliveryRow],
    title: &str,
) -> Result<(), String> {
    use crate::delivery::Path as Route;
    let mut payloads: Vec<usize> = rows.iter().map(|row| row.payload).collect();
    payloads.dedup();
    if payloads.is_empty() {
        return Ok(());
    }
    let height = 120 + 260 * payloads.len() as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| failed("delivery")(e.to_string()))?;
    let root = root
        .titled(
            &format!("end to end events/s: Rivulet beside nginx — {title}"),
            ("sans-serif", 18),
        )
        .map_err(|e| failed("delivery")(e.to_string()))?;
    let panels = root.split_evenly((payloads.len(), 1));
    for (panel, payload) in panels.iter().zip(payloads) {
        let shown: Vec<&crate::delivery::DeliveryRow> =
            rows.iter().filter(|row| row.payload == payload).collect();
        let top = shown
            .iter()
            .map(|row| row.events_per_second)
            .fold(1.0, f64::max)
            * 1.1;
        let labels: Vec<String> = shown.iter().map(|row| row.path.label()).collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(
                format!("payload {}", crate::size_label(payload)),
                ("sans-serif", 15),
            )
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(260)
            .build_cartesian_2d(0.0..top, (0..shown.len()).into_segmented())
            .map_err(|e| failed("delivery")(e.to_string()))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_label_formatter(&|segment| match segment {
                SegmentValue::CenterOf(index) => labels.get(*index).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| format!("{v:.0}"))
            .x_desc("events/s, first request to last delivery")
            .draw()
            .map_err(|e| failed("delivery")(e.to_string()))?;
        chart
            .draw_series(shown.iter().enumerate().map(|(index, row)| {
                let color = match row.path {
                    Route::Receiver | Route::Proxy => BASELINE,
                    _ => RIVULET,
                };
                Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(index)),
                        (row.events_per_second, SegmentValue::Exact(index + 1)),
                    ],
                    color.filled(),
                )
            }))
            .map_err(|e| failed("delivery")(e.to_string()))?;
        if let Some(proxy) = shown.iter().find(|row| row.path == Route::Proxy) {
            for (aim, name) in [(0.7, "0.7 × proxy"), (0.5, "0.5 × proxy")] {
                let x = proxy.events_per_second * aim;
                chart
                    .draw_series(LineSeries::new(
                        [
                            (x, SegmentValue::Exact(0)),
                            (x, SegmentValue::Exact(shown.len())),
                        ],
                        AIM.stroke_width(1),
                    ))
                    .map_err(|e| failed("delivery")(e.to_string()))?
                    .label(name)
                    .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], AIM));
            }
        }
    }
    root.present()
        .map_err(|e| failed("delivery")(e.to_string()))
}
