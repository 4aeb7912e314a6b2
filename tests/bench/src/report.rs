//! The bench's result rows, their verdicts against the goals, and the two ways
//! to print them: an aligned text table and a JSON document.

use serde::Serialize;

/// What a figure's numbers measure; decides formatting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Unit {
    /// Milliseconds of latency (lower is better).
    #[serde(rename = "ms")]
    Ms,
    /// Megabytes (10^6 bytes) per second (higher is better).
    #[serde(rename = "MB/s")]
    MBps,
    /// Mebibytes of resident memory.
    #[serde(rename = "MiB")]
    MiB,
}

/// A measured value: the p50 and, where there were several samples, the p90.
/// For throughput, "p90" is the rate at the p90 duration (the slow tail).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Value {
    pub p50: f64,
    pub p90: Option<f64>,
    pub unit: Unit,
    /// Samples behind the percentiles.
    pub n: usize,
}

impl Value {
    pub fn ms(p50: f64, p90: f64, n: usize) -> Value {
        Value {
            p50,
            p90: Some(p90),
            unit: Unit::Ms,
            n,
        }
    }

    pub fn single(v: f64, unit: Unit) -> Value {
        Value {
            p50: v,
            p90: None,
            unit,
            n: 1,
        }
    }

    pub fn render(&self) -> String {
        let one = |v: f64| format_number(v, self.unit);
        match self.p90 {
            Some(p90) if self.n > 1 => format!("{} (p90 {})", one(self.p50), one(p90)),
            _ => one(self.p50),
        }
    }
}

fn format_number(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Ms if v >= 1000.0 => format!("{:.2} s", v / 1000.0),
        Unit::Ms if v >= 100.0 => format!("{v:.0} ms"),
        Unit::Ms if v >= 10.0 => format!("{v:.1} ms"),
        Unit::Ms => format!("{v:.2} ms"),
        Unit::MBps => format!("{v:.0} MB/s"),
        Unit::MiB => format!("{v:.1} MiB"),
    }
}

/// The target a figure is held to.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", content = "limit", rename_all = "snake_case")]
pub enum Goal {
    /// ratio <= limit
    RatioAtMost(f64),
    /// ratio < limit (strictly faster)
    RatioBelow(f64),
    /// ratio >= limit
    RatioAtLeast(f64),
    /// measured p50 <= limit, in the measured unit
    ValueAtMost(f64),
    /// Reported for information; no goal.
    None,
}

impl Goal {
    fn render(&self, unit: Option<Unit>) -> String {
        match *self {
            Goal::RatioAtMost(l) => format!("<= {l}x"),
            Goal::RatioBelow(l) => format!("< {l}x"),
            Goal::RatioAtLeast(l) => format!(">= {l}x"),
            Goal::ValueAtMost(l) => match unit {
                Some(u) => format!("<= {}", format_number(l, u)),
                None => format!("<= {l}"),
            },
            Goal::None => "-".into(),
        }
    }

    /// The ratio with two decimals, or as many more (up to four) as it
    /// takes for the printed ratio to agree with the verdict: 0.2504 is
    /// "0.2504x" next to "<= 0.25x | MISS", not "0.25x".
    fn render_ratio(&self, ratio: f64) -> String {
        let verdict = self.met(Some(ratio), None);
        let mut decimals = 2;
        loop {
            let shown = format!("{ratio:.decimals$}");
            let agrees = shown
                .parse::<f64>()
                .is_ok_and(|r| self.met(Some(r), None) == verdict);
            if agrees || decimals == 4 {
                return format!("{shown}x");
            }
            decimals += 1;
        }
    }

    fn met(&self, ratio: Option<f64>, measured: Option<&Value>) -> Option<bool> {
        match *self {
            Goal::RatioAtMost(l) => ratio.map(|r| r <= l),
            Goal::RatioBelow(l) => ratio.map(|r| r < l),
            Goal::RatioAtLeast(l) => ratio.map(|r| r >= l),
            Goal::ValueAtMost(l) => measured.map(|m| m.p50 <= l),
            Goal::None => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Miss,
    /// The figure could not be measured (the reason is in the note).
    Unavailable,
    /// Informational row without a goal.
    Info,
}

impl Verdict {
    fn render(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Miss => "MISS",
            Verdict::Unavailable => "n/a",
            Verdict::Info => "info",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable key for scripts reading the JSON.
    pub id: &'static str,
    pub figure: String,
    pub measured: Option<Value>,
    pub baseline_name: String,
    pub baseline: Option<Value>,
    pub ratio: Option<f64>,
    pub goal: Goal,
    pub verdict: Verdict,
    /// Extra facts (message counts, why a figure is unavailable, ...).
    pub note: String,
}

impl Row {
    /// A measured row; the ratio is measured p50 / baseline p50.
    pub fn measured(
        id: &'static str,
        figure: impl Into<String>,
        measured: Value,
        baseline_name: impl Into<String>,
        baseline: Option<Value>,
        goal: Goal,
    ) -> Row {
        let ratio = baseline
            .filter(|b| b.p50 > 0.0)
            .map(|b| measured.p50 / b.p50);
        let verdict = match goal.met(ratio, Some(&measured)) {
            Some(true) => Verdict::Pass,
            Some(false) => Verdict::Miss,
            None => Verdict::Info,
        };
        Row {
            id,
            figure: figure.into(),
            measured: Some(measured),
            baseline_name: baseline_name.into(),
            baseline,
            ratio,
            goal,
            verdict,
            note: String::new(),
        }
    }

    /// A row that could not be measured, saying why.
    pub fn unavailable(
        id: &'static str,
        figure: impl Into<String>,
        baseline_name: impl Into<String>,
        goal: Goal,
        reason: impl Into<String>,
    ) -> Row {
        Row {
            id,
            figure: figure.into(),
            measured: None,
            baseline_name: baseline_name.into(),
            baseline: None,
            ratio: None,
            goal,
            verdict: Verdict::Unavailable,
            note: format!("unavailable: {}", reason.into()),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Row {
        let note = note.into();
        if self.note.is_empty() {
            self.note = note;
        } else {
            self.note = format!("{}; {note}", self.note);
        }
        self
    }

    /// Whether the row was measured and missed its goal.
    pub fn missed(&self) -> bool {
        self.verdict == Verdict::Miss
    }
}

/// Where and when the figures were measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub date_utc: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    /// 1/5/15-minute load averages when the bench started and ended: the
    /// machine is shared, so read wall-clock figures in their light.
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    /// runtimed's data directory and its filesystem.
    pub data_dir: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub runtimed: String,
    pub python: Option<String>,
    pub rows: Vec<Row>,
    pub missed: Vec<&'static str>,
}

impl Report {
    pub fn new(
        machine: Machine,
        runtimed: String,
        python: Option<String>,
        rows: Vec<Row>,
    ) -> Report {
        let missed = rows.iter().filter(|r| r.missed()).map(|r| r.id).collect();
        Report {
            machine,
            runtimed,
            python,
            rows,
            missed,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let header = [
            "#",
            "figure",
            "measured p50",
            "baseline",
            "baseline p50",
            "ratio",
            "goal",
            "result",
        ];
        let mut cells: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for (i, r) in self.rows.iter().enumerate() {
            cells.push(vec![
                (i + 1).to_string(),
                r.figure.clone(),
                r.measured.map(|v| v.render()).unwrap_or_else(|| "-".into()),
                r.baseline_name.clone(),
                r.baseline.map(|v| v.render()).unwrap_or_else(|| "-".into()),
                r.ratio
                    .map(|x| r.goal.render_ratio(x))
                    .unwrap_or_else(|| "-".into()),
                r.goal.render(r.measured.map(|m| m.unit)),
                r.verdict.render().into(),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| {
                cells
                    .iter()
                    .map(|row| row[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let load = |l: Option<[f64; 3]>| match l {
            Some([a, b, c]) => format!("{a:.2} {b:.2} {c:.2}"),
            None => "unknown".into(),
        };
        let mut out = format!(
            "kruntimes bench, {} UTC, {} CPUs ({}), kernel {}, {:.0} GiB RAM\n\
             load average at start {}, at end {}\n\
             runtimed data dir: {}\n\n",
            self.machine.date_utc,
            self.machine.cpus,
            self.machine.cpu_model,
            self.machine.kernel,
            self.machine.memory_gib,
            load(self.machine.loadavg_start),
            load(self.machine.loadavg_end),
            self.machine.data_dir
        );
        for (i, row) in cells.iter().enumerate() {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            out.push_str(line.join(" | ").trim_end());
            out.push('\n');
            if i == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                out.push_str(&rule.join("-|-"));
                out.push('\n');
            }
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.note.is_empty())
            .map(|(i, r)| format!("  [{}] {}: {}", i + 1, r.figure, r.note))
            .collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            out.push_str(&notes.join("\n"));
            out.push('\n');
        }
        out.push('\n');
        if self.missed.is_empty() {
            out.push_str("all measured goals met\n");
        } else {
            let missed: Vec<String> = self
                .rows
                .iter()
                .filter(|r| r.missed())
                .map(|r| r.figure.clone())
                .collect();
            out.push_str(&format!(
                "GOALS MISSED ({}): {}\n",
                missed.len(),
                missed.join("; ")
            ));
        }
        let unavailable = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Unavailable)
            .count();
        if unavailable > 0 {
            out.push_str(&format!(
                "{unavailable} figure(s) unavailable (see notes)\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_follow_the_goal() {
        let m = Value::ms(3.0, 4.0, 10);
        let b = Some(Value::ms(2.0, 2.5, 10));
        let r = Row::measured("x", "x", m, "raw", b, Goal::RatioAtMost(1.5));
        assert_eq!(r.ratio, Some(1.5));
        assert_eq!(r.verdict, Verdict::Pass);
        let r = Row::measured("x", "x", m, "raw", b, Goal::RatioBelow(1.5));
        assert_eq!(r.verdict, Verdict::Miss);
        let tput = Value::single(400.0, Unit::MBps);
        let raw = Some(Value::single(1000.0, Unit::MBps));
        let r = Row::measured("s", "s", tput, "pipe", raw, Goal::RatioAtLeast(0.5));
        assert_eq!(r.verdict, Verdict::Miss);
        let rss = Value::single(16.0, Unit::MiB);
        let r = Row::measured("m", "m", rss, "-", None, Goal::ValueAtMost(15.0));
        assert_eq!(r.verdict, Verdict::Miss);
        let r = Row::measured("m", "m", rss, "-", None, Goal::None);
        assert_eq!(r.verdict, Verdict::Info);
    }

    #[test]
    fn a_ratio_is_printed_with_the_decimals_its_verdict_needs() {
        let at_most = Goal::RatioAtMost(0.25);
        assert_eq!(at_most.render_ratio(0.2504), "0.2504x");
        assert_eq!(at_most.render_ratio(0.25), "0.25x");
        assert_eq!(at_most.render_ratio(0.2349), "0.23x");
        assert_eq!(Goal::RatioAtLeast(0.5).render_ratio(0.4976), "0.498x");
        assert_eq!(Goal::RatioAtMost(1.5).render_ratio(1.50001), "1.5000x");
        assert_eq!(Goal::None.render_ratio(1.2345), "1.23x");
    }

    #[test]
    fn table_names_missed_and_unavailable_rows() {
        let machine = Machine {
            date_utc: "2026-01-01T00:00:00Z".into(),
            cpus: 2,
            cpu_model: "cpu".into(),
            kernel: "6".into(),
            memory_gib: 24.0,
            loadavg_start: None,
            loadavg_end: Some([1.0, 2.0, 3.0]),
            data_dir: "/tmp/d on ext4 /dev/vda mounted on /, no journal".into(),
        };
        let rows = vec![
            Row::measured(
                "bash_run",
                "bash Run",
                Value::ms(3.0, 4.0, 10),
                "spawn",
                Some(Value::ms(1.0, 1.0, 10)),
                Goal::RatioAtMost(1.5),
            ),
            Row::unavailable(
                "jupyter",
                "vs Jupyter",
                "kernel",
                Goal::RatioBelow(1.0),
                "no ipykernel",
            ),
        ];
        let report = Report::new(machine, "runtimed".into(), None, rows);
        assert_eq!(report.missed, vec!["bash_run"]);
        let t = report.to_table();
        assert!(t.contains("MISS"), "{t}");
        assert!(t.contains("GOALS MISSED (1): bash Run"), "{t}");
        assert!(t.contains("unavailable: no ipykernel"), "{t}");
        assert!(t.contains("3.00x"), "{t}");
        assert!(t.contains("at start unknown, at end 1.00 2.00 3.00"), "{t}");
    }
}
