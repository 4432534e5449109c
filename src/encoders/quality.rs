//! How closely a compressed encoder follows its original: per-input cosine and the Spearman
//! correlation of all pairwise similarities (does it rank neighbours the same way?).

use super::cosine;

/// Agreement of a variant's embeddings with the original's on the same inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Agreement {
    pub mean_cosine: f64,
    pub min_cosine: f64,
    /// Spearman correlation between the two sets of pairwise cosine similarities.
    pub spearman: f64,
}

/// Compare `variant[i]` with `original[i]`; both must embed the same inputs in the same order.
pub fn agreement(original: &[Vec<f32>], variant: &[Vec<f32>]) -> Agreement {
    let cos: Vec<f64> = original
        .iter()
        .zip(variant)
        .map(|(a, b)| f64::from(cosine(a, b)))
        .collect();
    let n = cos.len().max(1) as f64;
    Agreement {
        mean_cosine: cos.iter().sum::<f64>() / n,
        min_cosine: cos.iter().copied().fold(f64::INFINITY, f64::min),
        spearman: spearman(&pairwise_cosines(original), &pairwise_cosines(variant)),
    }
}

/// Cosine similarity of every unordered pair, in a fixed order.
pub fn pairwise_cosines(v: &[Vec<f32>]) -> Vec<f64> {
    let mut out = Vec::with_capacity(v.len() * v.len().saturating_sub(1) / 2);
    for i in 0..v.len() {
        for j in i + 1..v.len() {
            out.push(f64::from(cosine(&v[i], &v[j])));
        }
    }
    out
}

/// Spearman rank correlation (average ranks for ties); NaN when either side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    let (ra, rb) = (ranks(a), ranks(b));
    let n = ra.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

fn ranks(x: &[f64]) -> Vec<f64> {
    let mut ix: Vec<usize> = (0..x.len()).collect();
    ix.sort_by(|&i, &j| x[i].total_cmp(&x[j]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < ix.len() {
        let mut j = i;
        while j + 1 < ix.len() && x[ix[j + 1]] == x[ix[i]] {
            j += 1;
        }
        for &k in &ix[i..=j] {
            r[k] = (i + j) as f64 / 2.0;
        }
        i = j + 1;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_and_reversed_and_ties() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert!((spearman(&a, &[10.0, 20.0, 30.0, 1000.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&a, &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // scipy.stats.spearmanr([1,2,3,4],[1,1,2,3]) = 0.9486832980505138
        assert!((spearman(&a, &[1.0, 1.0, 2.0, 3.0]) - 0.948_683_298_050_513_8).abs() < 1e-12);
    }

    #[test]
    fn agreement_of_identical_and_perturbed_sets() {
        let v = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let same = agreement(&v, &v);
        assert!((same.mean_cosine - 1.0).abs() < 1e-6 && (same.spearman - 1.0).abs() < 1e-12);
        let w = vec![vec![0.0, 1.0], vec![1.0, 0.0], vec![1.0, 1.0]];
        let swapped = agreement(&v, &w);
        assert!(swapped.min_cosine < 0.01, "{swapped:?}");
        assert_eq!(pairwise_cosines(&v).len(), 3);
    }
}
