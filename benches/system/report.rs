//! The result table.

use crate::Options;

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) id: &'static str,
    pub(crate) measure: String,
    pub(crate) ours: String,
    pub(crate) baseline: String,
    /// ours / baseline where both are numbers.
    pub(crate) ratio: Option<f64>,
    pub(crate) goal: String,
    /// None when there is no goal or it could not be judged.
    pub(crate) met: Option<bool>,
}

impl Row {
    /// A row whose goal is `ratio >= min`.
    pub(crate) fn ratio_at_least(
        id: &'static str,
        measure: impl Into<String>,
        (ours, ours_text): (f64, String),
        (baseline, baseline_text): (f64, String),
        min: f64,
    ) -> Row {
        let ratio = (baseline > 0.0).then(|| ours / baseline);
        Row {
            id,
            measure: measure.into(),
            ours: ours_text,
            baseline: baseline_text,
            ratio,
            goal: format!(">= {min}x"),
            met: ratio.map(|r| r >= min),
        }
    }

    /// A row with a ratio but no goal: a reference that shows what bounds a measure.
    pub(crate) fn reference(
        id: &'static str,
        measure: impl Into<String>,
        (ours, ours_text): (f64, String),
        (baseline, baseline_text): (f64, String),
    ) -> Row {
        Row {
            id,
            measure: measure.into(),
            ours: ours_text,
            baseline: baseline_text,
            ratio: (baseline > 0.0).then(|| ours / baseline),
            goal: "- (reference)".into(),
            met: None,
        }
    }

    /// A row that could not run, saying why.
    pub(crate) fn missing(
        id: &'static str,
        measure: impl Into<String>,
        why: impl Into<String>,
    ) -> Row {
        Row {
            id,
            measure: measure.into(),
            ours: format!("not run: {}", why.into()),
            baseline: "-".into(),
            ratio: None,
            goal: "-".into(),
            met: None,
        }
    }
}

/// Formats a rate like `123,456/s`.
pub(crate) fn per_sec(v: f64) -> String {
    format!("{}/s", thousands(v))
}

/// `1234567.8` -> `1,234,568`.
pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as i128;
    let digits = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

pub(crate) fn markdown(options: &Options, rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Whole-system benchmark, {} ({} cores), {} events replayed, page size {}, wrk {} s x {} connections\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        std::thread::available_parallelism().map_or(0, usize::from),
        thousands(options.events as f64),
        options.page_size,
        options.wrk_seconds,
        options.wrk_connections,
    ));
    out.push_str("| id | measure | ours | baseline | ratio | goal | met? |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let ratio = r.ratio.map_or("-".to_owned(), |x| format!("{x:.2}x"));
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.id, r.measure, r.ours, r.baseline, ratio, r.goal, met
        ));
    }
    out
}
