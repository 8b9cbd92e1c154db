//! The learning-rate schedule of the recipe: linear warmup over a fraction of the steps, then
//! cosine decay to zero (transformers' `get_cosine_schedule_with_warmup`).

/// Warmup then cosine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    /// The learning rate at the end of warmup.
    pub peak: f64,
    /// Optimizer steps of warmup.
    pub warmup_steps: usize,
    /// All optimizer steps.
    pub total_steps: usize,
}

impl WarmupCosine {
    /// A schedule whose warmup is `ratio` of `total_steps`, rounded up (as transformers'
    /// `get_warmup_steps` does with `warmup_ratio`).
    pub fn with_ratio(peak: f64, ratio: f64, total_steps: usize) -> Self {
        WarmupCosine {
            peak,
            warmup_steps: (ratio * total_steps as f64).ceil() as usize,
            total_steps,
        }
    }

    /// The learning rate for optimizer step `step` (0-based; the first step uses `lr(0)`).
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / decay).min(1.0);
        self.peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_linearly_then_decays_to_zero() {
        // 3 % of 100 steps: 3 warmup steps, as LLaVA-1.5's warmup_ratio 0.03.
        let s = WarmupCosine::with_ratio(1e-3, 0.03, 100);
        assert_eq!(s.warmup_steps, 3);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(1) - 1e-3 / 3.0).abs() < 1e-15);
        assert_eq!(s.lr(3), 1e-3);
        assert!(
            (s.lr(3 + 97 / 2) - 0.5e-3).abs() < 2e-5,
            "half way down the cosine"
        );
        assert!(s.lr(99) < 1e-6 && s.lr(100) == 0.0);
        let lrs: Vec<f64> = (3..=100).map(|i| s.lr(i)).collect();
        assert!(lrs.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn tiny_runs_still_warm_up() {
        let s = WarmupCosine::with_ratio(2e-5, 0.03, 5);
        assert_eq!(s.warmup_steps, 1);
        assert_eq!(s.lr(0), 0.0);
        assert_eq!(s.lr(1), 2e-5);
    }
}
