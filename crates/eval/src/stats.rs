//! How sure a score is: each metric keeps the units it is computed from (questions, or the
//! question pairs and figures a grouped metric counts), so that a bootstrap over those units gives
//! its 95 % interval, and two runs of one benchmark can be compared unit by unit (a paired
//! bootstrap of their difference).

use serde::{Deserialize, Serialize};

/// Bootstrap resamples (a 95 % percentile interval's ends move by well under 0.1 points between
/// seeds at this count for benchmarks of a few hundred questions or more).
pub const RESAMPLES: usize = 2000;

/// One unit a metric is computed from: a question (or a pair, a figure) with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Its id (a question id; `category_subcategory_set_question` for a grouped unit).
    pub id: String,
    /// The group it is averaged in (MMStar's L2 category), or empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// Its score: 0 or 1, or a fraction (TextVQA).
    pub value: f64,
}

impl Unit {
    /// A right (1) or wrong (0) question, in no group.
    pub fn of(id: &str, right: bool) -> Self {
        Unit {
            id: id.to_string(),
            group: String::new(),
            value: f64::from(u8::from(right)),
        }
    }
}

/// How a metric's units become its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// The mean of the units.
    Mean,
    /// The sum of the units (OCRBench's score out of 1000).
    Sum,
    /// The mean of each group's mean (lmms-eval's MMStar average); the bootstrap resamples within
    /// each group.
    MeanOfGroupMeans,
    /// F1 of "yes" from answers whose group is their outcome (`tp`, `fp`, `tn`, `fn`):
    /// 2·TP / (2·TP + FP + FN), 0 without a true positive (POPE).
    F1,
}

/// A metric with the units it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Its name (`accuracy`, `average`, `aAcc`, `final_score`, …).
    pub name: String,
    /// How its units combine.
    pub aggregate: Aggregate,
    /// What the combined units are multiplied by (100 for percentages).
    pub scale: f64,
    /// The units.
    pub units: Vec<Unit>,
}

impl Metric {
    /// A metric over `units`.
    pub fn new(name: &str, aggregate: Aggregate, scale: f64, units: Vec<Unit>) -> Self {
        Metric {
            name: name.to_string(),
            aggregate,
            scale,
            units,
        }
    }

    /// Its value (0 when it has no units).
    pub fn value(&self) -> f64 {
        let refs: Vec<&Unit> = self.units.iter().collect();
        self.scale * combine(self.aggregate, &refs)
    }

    /// The 95 % percentile bootstrap interval of its value, from `resamples` resamples of its
    /// units drawn with a fixed seed (so a rerun prints the same interval).
    pub fn interval(&self, resamples: usize) -> [f64; 2] {
        let strata = strata(self.aggregate, &self.units);
        let mut rng = SplitMix64(0x5eed);
        let mut values: Vec<f64> = (0..resamples)
            .map(|_| {
                let sample: Vec<&Unit> = resample(&strata, &mut rng)
                    .into_iter()
                    .map(|i| &self.units[i])
                    .collect();
                self.scale * combine(self.aggregate, &sample)
            })
            .collect();
        percentile_interval(&mut values)
    }

    /// The summary a score prints: value, interval and unit count.
    pub fn summary(&self) -> Summary {
        Summary {
            value: self.value(),
            interval: self.interval(RESAMPLES),
            units: self.units.len(),
        }
    }
}

/// A metric's value, its 95 % interval and how many units it has.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The value.
    pub value: f64,
    /// The 95 % bootstrap interval.
    pub interval: [f64; 2],
    /// The number of units.
    pub units: usize,
}

/// Two runs' metric compared on the units both have.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// The metric.
    pub metric: String,
    /// Its value in run A and in run B, over the shared units.
    pub a: f64,
    /// See `a`.
    pub b: f64,
    /// `a - b`.
    pub difference: f64,
    /// The paired bootstrap's 95 % interval of the difference.
    pub interval: [f64; 2],
    /// True when that interval leaves out 0.
    pub differs: bool,
    /// Units both runs have.
    pub shared: usize,
    /// Units of one run only (left out).
    pub only_a: usize,
    /// See `only_a`.
    pub only_b: usize,
}

/// Compares the same metric of two runs: both restricted to the units they share, then the shared
/// units resampled together (paired) and the difference's interval taken.
pub fn compare(a: &Metric, b: &Metric, resamples: usize) -> Comparison {
    use std::collections::HashMap;
    let in_b: HashMap<&str, &Unit> = b.units.iter().map(|u| (u.id.as_str(), u)).collect();
    let pairs: Vec<(&Unit, &Unit)> = a
        .units
        .iter()
        .filter_map(|u| in_b.get(u.id.as_str()).map(|v| (u, *v)))
        .collect();
    let shared = pairs.len();
    let left: Vec<&Unit> = pairs.iter().map(|p| p.0).collect();
    let right: Vec<&Unit> = pairs.iter().map(|p| p.1).collect();
    let va = a.scale * combine(a.aggregate, &left);
    let vb = b.scale * combine(b.aggregate, &right);
    // Resample the shared pairs together (within A's groups for a mean of group means).
    let strata = strata(a.aggregate, left.iter().copied());
    let mut rng = SplitMix64(0x5eed);
    let mut diffs: Vec<f64> = (0..resamples)
        .map(|_| {
            let (sa, sb): (Vec<&Unit>, Vec<&Unit>) = resample(&strata, &mut rng)
                .into_iter()
                .map(|i| (left[i], right[i]))
                .unzip();
            a.scale * combine(a.aggregate, &sa) - b.scale * combine(b.aggregate, &sb)
        })
        .collect();
    let interval = percentile_interval(&mut diffs);
    Comparison {
        metric: a.name.clone(),
        a: va,
        b: vb,
        difference: va - vb,
        interval,
        differs: shared > 0 && (interval[0] > 0.0 || interval[1] < 0.0),
        shared,
        only_a: a.units.len() - shared,
        only_b: b.units.len() - shared,
    }
}

/// The units' combined value (unscaled).
fn combine(aggregate: Aggregate, units: &[&Unit]) -> f64 {
    if units.is_empty() {
        return 0.0;
    }
    match aggregate {
        Aggregate::Mean => units.iter().map(|u| u.value).sum::<f64>() / units.len() as f64,
        Aggregate::Sum => units.iter().map(|u| u.value).sum(),
        Aggregate::MeanOfGroupMeans => {
            // Groups in first-seen order, as the reference's dict keeps them.
            let mut groups: Vec<(&str, f64, usize)> = Vec::new();
            for u in units {
                match groups.iter_mut().find(|g| g.0 == u.group) {
                    Some(g) => {
                        g.1 += u.value;
                        g.2 += 1;
                    }
                    None => groups.push((&u.group, u.value, 1)),
                }
            }
            groups.iter().map(|g| g.1 / g.2 as f64).sum::<f64>() / groups.len() as f64
        }
        Aggregate::F1 => {
            let count = |o: &str| units.iter().filter(|u| u.group == o).count() as f64;
            let (tp, fp, fn_) = (count("tp"), count("fp"), count("fn"));
            if tp == 0.0 {
                0.0
            } else {
                2.0 * tp / (2.0 * tp + fp + fn_)
            }
        }
    }
}

/// The units' indices split into the strata a resample draws from: one stratum, or one per
/// group (in first-seen order).
fn strata<'a>(aggregate: Aggregate, units: impl IntoIterator<Item = &'a Unit>) -> Vec<Vec<usize>> {
    let units: Vec<&Unit> = units.into_iter().collect();
    match aggregate {
        Aggregate::MeanOfGroupMeans => {
            let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
            for (i, u) in units.iter().enumerate() {
                match groups.iter_mut().find(|g| g.0 == u.group) {
                    Some(g) => g.1.push(i),
                    None => groups.push((&u.group, vec![i])),
                }
            }
            groups.into_iter().map(|g| g.1).collect()
        }
        _ => vec![(0..units.len()).collect()],
    }
}

/// One bootstrap resample of unit indices: each stratum drawn with replacement to its own size.
fn resample(strata: &[Vec<usize>], rng: &mut SplitMix64) -> Vec<usize> {
    strata
        .iter()
        .flat_map(|s| {
            let n = s.len() as u64;
            (0..s.len())
                .map(|_| s[(rng.next() % n) as usize])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The 2.5th and 97.5th percentiles (linear interpolation, as numpy's default).
fn percentile_interval(values: &mut [f64]) -> [f64; 2] {
    if values.is_empty() {
        return [0.0, 0.0];
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let pos = q * (values.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    };
    [at(0.025), at(0.975)]
}

/// A small, fixed pseudo-random generator (SplitMix64), so intervals do not move between versions
/// of a random-number crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(values: &[f64]) -> Vec<Unit> {
        values
            .iter()
            .enumerate()
            .map(|(i, &v)| Unit {
                id: i.to_string(),
                group: if i % 2 == 0 { "even" } else { "odd" }.into(),
                value: v,
            })
            .collect()
    }

    #[test]
    fn the_interval_of_a_proportion_matches_its_normal_approximation() {
        // 600 of 1000 right: the normal interval is 0.6 ± 1.96·sqrt(0.24/1000) = ±0.0304.
        let v: Vec<f64> = (0..1000).map(|i| f64::from(i % 5 < 3)).collect();
        let m = Metric::new("accuracy", Aggregate::Mean, 1.0, units(&v));
        assert!((m.value() - 0.6).abs() < 1e-12);
        let [lo, hi] = m.interval(RESAMPLES);
        assert!((lo - 0.5696).abs() < 0.006, "{lo}");
        assert!((hi - 0.6304).abs() < 0.006, "{hi}");
        assert_eq!(m.interval(RESAMPLES), [lo, hi], "seeded");
    }

    #[test]
    fn mean_of_group_means_weights_groups_equally() {
        // even: 1,1,1 (mean 1); odd: 0,0 (mean 0) → 0.5, not 0.6.
        let m = Metric::new(
            "average",
            Aggregate::MeanOfGroupMeans,
            1.0,
            units(&[1.0, 0.0, 1.0, 0.0, 1.0]),
        );
        assert_eq!(m.value(), 0.5);
        // Every resample keeps both groups whole, so the value cannot move.
        assert_eq!(m.interval(200), [0.5, 0.5]);
    }

    #[test]
    fn paired_comparison_sees_small_consistent_differences() {
        let a: Vec<f64> = (0..400).map(|i| f64::from(i % 2 == 0)).collect();
        let mut b = a.clone();
        for v in b.iter_mut().step_by(20) {
            *v = 0.0;
        }
        let ma = Metric::new("accuracy", Aggregate::Mean, 100.0, units(&a));
        let mb = Metric::new("accuracy", Aggregate::Mean, 100.0, units(&b));
        let c = compare(&ma, &mb, RESAMPLES);
        assert_eq!(c.shared, 400);
        assert!((c.difference - 5.0).abs() < 1e-9);
        assert!(c.differs, "{c:?}");
        let same = compare(&ma, &ma, RESAMPLES);
        assert!(!same.differs);
        assert_eq!(same.interval, [0.0, 0.0]);
    }

    #[test]
    fn f1_from_outcomes() {
        let u = |o: &str| Unit {
            id: o.into(),
            group: o.into(),
            value: 1.0,
        };
        // P = 2/3, R = 2/4: F1 = 2PR/(P+R) = 4/7.
        let units = vec![u("tp"), u("tp"), u("fp"), u("fn"), u("fn"), u("tn")];
        let m = Metric::new("f1", Aggregate::F1, 1.0, units);
        assert!((m.value() - 4.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn sums_and_missing_units() {
        let m = Metric::new("final_score", Aggregate::Sum, 1.0, units(&[1.0, 0.0, 1.0]));
        assert_eq!(m.value(), 2.0);
        let mut short = m.clone();
        short.units.pop();
        let c = compare(&m, &short, 100);
        assert_eq!((c.shared, c.only_a, c.only_b), (2, 1, 0));
        assert_eq!(Metric::new("x", Aggregate::Mean, 1.0, vec![]).value(), 0.0);
    }
}
