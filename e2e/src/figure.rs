//! One row of the budgets table: a figure's samples (kios-init's, and the
//! reference init's when one runs in the same harness), its budget, and how
//! it is printed (min, median, max, budget, pass or fail, ratio).

use std::fmt::Write as _;

/// What a figure must satisfy, judged on its median.
#[derive(Debug, Clone)]
pub enum Budget {
    /// Reported only: no budget.
    None,
    /// The median is at most this value.
    AtMost(f64),
    /// The median is at least this value.
    AtLeast(f64),
    /// The median is at most this fraction of the reference's median (e.g.
    /// 0.5: at most half the reference's boot). Without a reference run,
    /// reported only.
    AtMostOfReference(f64),
    /// The median is at least `fraction` of the median of another set of
    /// samples measured in the same run (e.g. 80% of `sha256sum`'s
    /// throughput): `(what, its samples, fraction)`.
    AtLeastOf(String, Vec<f64>, f64),
}

/// One measured figure.
#[derive(Debug, Clone)]
pub struct Figure {
    /// The table section: "boot", "memory", "binary", "reaction", "socket",
    /// "reaping", "verify", "kiosctl".
    pub group: &'static str,
    /// What is measured, e.g. "init start to kubelet exec".
    pub name: String,
    /// The samples' unit: "ms", "us", "KiB", "B", "MB/s", "req/s".
    pub unit: &'static str,
    /// kios-init's samples.
    pub samples: Vec<f64>,
    /// The reference init's samples through the same harness in the same
    /// run (`--reference PATH`), when it supports this figure.
    pub reference: Option<Vec<f64>>,
    pub budget: Budget,
}

impl Figure {
    pub fn new(group: &'static str, name: impl Into<String>, unit: &'static str) -> Figure {
        Figure {
            group,
            name: name.into(),
            unit,
            samples: Vec::new(),
            reference: None,
            budget: Budget::None,
        }
    }

    pub fn samples(mut self, samples: Vec<f64>) -> Figure {
        self.samples = samples;
        self
    }

    pub fn reference(mut self, samples: Option<Vec<f64>>) -> Figure {
        self.reference = samples;
        self
    }

    pub fn budget(mut self, budget: Budget) -> Figure {
        self.budget = budget;
        self
    }

    /// `None` when it has no budget (or one that needs a missing
    /// reference), else whether its median meets it.
    pub fn verdict(&self) -> Option<bool> {
        let ours = median(&self.samples)?;
        match &self.budget {
            Budget::None => None,
            Budget::AtMost(limit) => Some(ours <= *limit),
            Budget::AtLeast(limit) => Some(ours >= *limit),
            Budget::AtMostOfReference(fraction) => {
                let reference = median(self.reference.as_deref()?)?;
                Some(ours <= reference * fraction)
            }
            Budget::AtLeastOf(_, other, fraction) => {
                let other = median(other)?;
                Some(ours >= other * fraction)
            }
        }
    }

    fn budget_text(&self) -> String {
        match &self.budget {
            Budget::None => String::new(),
            Budget::AtMost(limit) => format!("<= {}", number(*limit)),
            Budget::AtLeast(limit) => format!(">= {}", number(*limit)),
            Budget::AtMostOfReference(fraction) => format!("<= {}x ref", number(*fraction)),
            Budget::AtLeastOf(what, other, fraction) => match median(other) {
                Some(m) => format!(
                    ">= {:.0}% of {what} ({})",
                    fraction * 100.0,
                    number(m * fraction)
                ),
                None => format!(">= {:.0}% of {what}", fraction * 100.0),
            },
        }
    }
}

/// The median of a set of samples (the mean of the two middle ones for an
/// even count); `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// The `p` quantile (0..=1) by nearest rank; `None` when empty.
pub fn quantile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((sorted.len() as f64) * p.clamp(0.0, 1.0)).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn min_max(samples: &[f64]) -> Option<(f64, f64)> {
    let finite = samples.iter().copied().filter(|v| v.is_finite());
    let min = finite.clone().reduce(f64::min)?;
    let max = finite.reduce(f64::max)?;
    Some((min, max))
}

/// A figure's value with as many decimals as it needs to be read.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn spread(samples: &[f64]) -> String {
    match (min_max(samples), median(samples)) {
        (Some((min, max)), Some(median)) => {
            format!("{} / {} / {}", number(min), number(median), number(max))
        }
        _ => "no samples".to_string(),
    }
}

/// The whole table, grouped by section in the order of first appearance,
/// and a last line counting the budgets met. `reference` names the
/// reference init when one ran.
pub fn render(figures: &[Figure], reference: Option<&str>) -> String {
    let mut out = String::new();
    let mut groups: Vec<&str> = Vec::new();
    for f in figures {
        if !groups.contains(&f.group) {
            groups.push(f.group);
        }
    }
    let _ = writeln!(
        out,
        "{:<52} {:>6} {:>26} {:>22} {:>5}{}",
        "figure",
        "unit",
        "min / median / max",
        "budget",
        "",
        if reference.is_some() {
            format!(" {:>26} {:>7}", "reference min/med/max", "ratio")
        } else {
            String::new()
        }
    );
    let (mut met, mut judged) = (0, 0);
    for group in groups {
        let _ = writeln!(out, "[{group}]");
        for f in figures.iter().filter(|f| f.group == group) {
            let verdict = match f.verdict() {
                None => "",
                Some(true) => "pass",
                Some(false) => "FAIL",
            };
            if let Some(ok) = f.verdict() {
                judged += 1;
                met += usize::from(ok);
            }
            let _ = write!(
                out,
                "{:<52} {:>6} {:>26} {:>22} {:>5}",
                f.name,
                f.unit,
                spread(&f.samples),
                f.budget_text(),
                verdict
            );
            if reference.is_some() {
                match &f.reference {
                    Some(r) => {
                        let ratio = match (median(&f.samples), median(r)) {
                            (Some(ours), Some(theirs)) if theirs != 0.0 => {
                                format!("{:.2}", ours / theirs)
                            }
                            _ => String::new(),
                        };
                        let _ = write!(out, " {:>26} {:>7}", spread(r), ratio);
                    }
                    None => {
                        let _ = write!(out, " {:>26} {:>7}", "not supported", "");
                    }
                }
            }
            out.push('\n');
        }
    }
    let _ = writeln!(out, "budgets met: {met} of {judged}");
    if let Some(name) = reference {
        let _ = writeln!(
            out,
            "reference: {name} (ratio: kios-init's median / the reference's)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), Some(4.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
    }

    #[test]
    fn verdicts_follow_the_median() {
        let f = Figure::new("x", "y", "ms").samples(vec![1.0, 5.0, 2.0]);
        assert_eq!(f.clone().budget(Budget::AtMost(2.0)).verdict(), Some(true));
        assert_eq!(f.clone().budget(Budget::AtMost(1.5)).verdict(), Some(false));
        assert_eq!(f.clone().budget(Budget::AtLeast(2.0)).verdict(), Some(true));
        assert_eq!(
            f.clone().budget(Budget::AtMostOfReference(0.5)).verdict(),
            None
        );
        let r = f
            .clone()
            .reference(Some(vec![4.0]))
            .budget(Budget::AtMostOfReference(0.5));
        assert_eq!(r.verdict(), Some(true));
        let o = f.budget(Budget::AtLeastOf("sha256sum".into(), vec![3.0], 0.8));
        assert_eq!(o.verdict(), Some(false));
    }

    #[test]
    fn the_table_counts_budgets_and_prints_ratios() {
        let figures = [
            Figure::new("boot", "init start to kubelet exec", "ms")
                .samples(vec![2.0, 3.0])
                .reference(Some(vec![10.0]))
                .budget(Budget::AtMostOfReference(0.5)),
            Figure::new("memory", "VmRSS", "KiB")
                .samples(vec![900.0])
                .budget(Budget::AtMost(700.0)),
            Figure::new("memory", "RssFile", "KiB").samples(vec![600.0]),
        ];
        let table = render(&figures, Some("kios-c-init"));
        assert!(
            table.contains("[boot]") && table.contains("[memory]"),
            "{table}"
        );
        assert!(table.contains("2.00 / 2.50 / 3.00"), "{table}");
        assert!(table.contains(" 0.25"), "{table}");
        assert!(table.contains("FAIL") && table.contains("pass"), "{table}");
        assert!(table.contains("not supported"), "{table}");
        assert!(table.contains("budgets met: 1 of 2"), "{table}");
    }
}
