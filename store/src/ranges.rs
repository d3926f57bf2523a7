//! Sets of address ranges as sorted, disjoint, non-adjacent `(start, end)` vectors.

/// Sorts and merges overlapping or adjacent ranges; drops empty ones.
pub fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|r| r.0 < r.1);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a ∩ b` (both normalized).
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a − b` (both normalized).
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > cur {
                out.push((cur, b[k].0));
            }
            cur = cur.max(b[k].1);
            k += 1;
        }
        if cur < e {
            out.push((cur, e));
        }
    }
    out
}

/// Whether `[s, e)` lies inside `set` (normalized).
pub fn covers(set: &[(u64, u64)], s: u64, e: u64) -> bool {
    let i = set.partition_point(|r| r.1 <= s);
    i < set.len() && set[i].0 <= s && e <= set[i].1
}

/// `(start, len)` regions as normalized `(start, end)` ranges.
pub fn of_regions(regions: &[(u64, u64)]) -> Vec<(u64, u64)> {
    normalize(regions.iter().map(|&(s, l)| (s, s + l)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let a = normalize(vec![(10, 20), (0, 5), (5, 7), (30, 40), (8, 8)]);
        assert_eq!(a, [(0, 7), (10, 20), (30, 40)]);
        let b = normalize(vec![(3, 12), (15, 35)]);
        assert_eq!(intersect(&a, &b), [(3, 7), (10, 12), (15, 20), (30, 35)]);
        assert_eq!(subtract(&a, &b), [(0, 3), (12, 15), (35, 40)]);
        assert_eq!(subtract(&b, &a), [(7, 10), (20, 30)]);
        assert!(covers(&a, 10, 20));
        assert!(!covers(&a, 6, 11));
        assert!(!covers(&a, 40, 41));
    }
}
