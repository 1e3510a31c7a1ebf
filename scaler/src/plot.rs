//! The simulator's plot: backlog, tasks and latency per minute, as SVG.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::sim::Outcome;

/// Points of one line: (minute, value).
type Line = Vec<(f64, f64)>;

/// Three stacked charts sharing the time axis (minutes).
pub fn svg(outcome: &Outcome, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1000, 900)).into_drawing_area();
    root.fill(&WHITE).context("drawing")?;
    let panels = root.split_evenly((3, 1));
    let minutes = outcome.minutes.len().max(1) as f64;
    let series: [(&str, Line, Option<Line>); 3] = [
        (
            "backlog (visible messages)",
            outcome
                .minutes
                .iter()
                .map(|m| (m.minute as f64, m.backlog as f64))
                .collect(),
            None,
        ),
        (
            "tasks running (blue) and ideal (red)",
            outcome
                .minutes
                .iter()
                .map(|m| (m.minute as f64, f64::from(m.running)))
                .collect(),
            Some(
                outcome
                    .minutes
                    .iter()
                    .map(|m| (m.minute as f64, m.ideal))
                    .collect(),
            ),
        ),
        (
            "slowest job finished that minute (s)",
            outcome
                .minutes
                .iter()
                .map(|m| (m.minute as f64, m.max_latency))
                .collect(),
            None,
        ),
    ];
    for (panel, (title, main, second)) in panels.iter().zip(series) {
        let top = main
            .iter()
            .chain(second.iter().flatten())
            .map(|p| p.1)
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..minutes, 0f64..top)
            .context("chart")?;
        chart
            .configure_mesh()
            .x_desc("minute")
            .draw()
            .context("mesh")?;
        chart
            .draw_series(LineSeries::new(main, &BLUE))
            .context("series")?;
        if let Some(second) = second {
            chart
                .draw_series(LineSeries::new(second, &RED))
                .context("series")?;
        }
    }
    root.present().context("writing the SVG")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::policy::TargetTracking;
    use crate::sim::{Processing, Profile, Scenario, simulate};

    #[test]
    fn the_plot_is_an_svg_with_the_three_charts() {
        let outcome = simulate(&Scenario {
            profile: Profile::parse("steady:3:600").unwrap(),
            processing: Processing::Fixed(1.0),
            concurrency: 2,
            startup: 30,
            policy: TargetTracking::default(),
            include_in_flight: true,
            activation_threshold: 0,
            wake_tasks: 1,
            initial_tasks: 0,
            seed: 1,
        });
        let dir = std::env::temp_dir().join(format!("url2png-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plot.svg");
        super::svg(&outcome, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(200)]);
        for title in ["backlog", "tasks running", "slowest job"] {
            assert!(text.contains(title), "{title}");
        }
        assert!(text.matches("<polyline").count() >= 4, "four lines");
    }
}
