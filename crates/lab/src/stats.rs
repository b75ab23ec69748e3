//! The estimators behind every figure the lab's benchmarks print, in one
//! place: a p50 is the [`median`] (the middle sample, or the mean of the two
//! middle ones for an even count); a tail (p99, max) is the
//! [`nearest_rank`] sample, one that was observed. Samples that are not
//! finite (a change with nothing to time) are left out; without samples
//! both give NaN (`null` in JSON).

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The median.
pub fn median(v: &[f64]) -> f64 {
    let v = sorted(v);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The sample at rank `(n - 1) * p`, rounded: `p` = 1 is the maximum.
pub fn nearest_rank(v: &[f64], p: f64) -> f64 {
    let v = sorted(v);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() - 1) as f64 * p.clamp(0.0, 1.0)).round() as usize;
    v[i.min(v.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_even_counts_are_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[7.0]), 7.0);
        assert!(median(&[]).is_nan());
        // a sample that is no number is left out
        assert_eq!(median(&[1.0, f64::NAN, 3.0]), 2.0);
        // ten node changes, as `bench-nodes` times by default
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(median(&ten), 5.5);
    }

    #[test]
    fn tails_are_observed_samples() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 0.99), 99.0);
        assert_eq!(nearest_rank(&v, 1.0), 100.0);
        assert_eq!(nearest_rank(&[5.0, f64::NAN], 1.0), 5.0);
        assert!(nearest_rank(&[], 0.99).is_nan());
    }
}
