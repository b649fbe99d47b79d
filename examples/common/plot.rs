//! Line charts as PNG for the examples: one panel per series group, text in DejaVu Sans when
//! the system has it (Debian's fonts-dejavu-core), without text otherwise.

use std::error::Error;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

/// One line of a panel.
#[derive(Clone)]
pub struct Line {
    /// Its legend entry; a panel whose labels are all empty has no legend.
    pub label: String,
    pub color: RGBColor,
    /// Thick lines for the main series, thin faded ones for the comparison.
    pub thick: bool,
    pub points: Vec<(f64, f64)>,
}

/// A panel: a title, axis descriptions, the y range and its lines.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub y_range: (f64, f64),
    pub lines: Vec<Line>,
}

/// matplotlib's `tab10`, without its grey and olive.
pub const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Registers DejaVu Sans once; `false` when no font file is found.
fn font_available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
        match std::fs::read(path) {
            // plotters keeps fonts for the life of the program.
            Ok(bytes) => plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                Box::leak(bytes.into_boxed_slice()),
            )
            .is_ok(),
            Err(_) => false,
        }
    })
}

/// Draws the panels side by side into a PNG of `width × height` pixels.
pub fn draw_panels(
    path: &Path,
    panels: &[Panel],
    (width, height): (u32, u32),
) -> Result<(), Box<dyn Error>> {
    let text = font_available();
    if !text {
        eprintln!("no DejaVu Sans font found: the plot is drawn without text");
    }
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    for (panel, area) in panels.iter().zip(areas) {
        let x_max = panel
            .lines
            .iter()
            .flat_map(|line| line.points.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        let mut builder = ChartBuilder::on(&area);
        builder.margin(12);
        if text {
            builder
                .caption(&panel.title, ("sans-serif", 20))
                .x_label_area_size(36)
                .y_label_area_size(48);
        }
        let mut chart = builder.build_cartesian_2d(0.0..x_max, panel.y_range.0..panel.y_range.1)?;
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_labels(5)
                .x_label_formatter(&|x| format!("{x:.0}"))
                .x_desc(panel.x_label.as_str())
                .y_desc(panel.y_label.as_str());
        } else {
            mesh.disable_x_axis().disable_y_axis();
        }
        mesh.draw()?;
        for line in &panel.lines {
            // The comparison series is thin and faded.
            let style = if line.thick {
                line.color.stroke_width(2)
            } else {
                line.color.mix(0.45).stroke_width(1)
            };
            let series = chart.draw_series(LineSeries::new(line.points.iter().copied(), style))?;
            if text && !line.label.is_empty() {
                series
                    .label(line.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
            }
        }
        if text && panel.lines.iter().any(|line| !line.label.is_empty()) {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}
