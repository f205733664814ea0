//! The server-side assignors of KIP-848 consumer groups, by the names
//! clients ask for in `group.remote.assignor`:
//!
//! * `uniform` (the default): balanced and sticky. A partition stays with
//!   its member unless balance needs it elsewhere.
//! * `range`: per topic, contiguous ranges over the subscribed members in
//!   member-id order (the classic RangeAssignor's layout).
//!
//! Pure functions, run by the group coordinator on its shard.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::consumer::Assignment;

pub const NAMES: [&str; 2] = ["uniform", "range"];
pub const DEFAULT: &str = "uniform";

/// Member id -> the topic names it subscribes to (existing ones).
pub type Subscriptions = BTreeMap<String, BTreeSet<String>>;

/// The target assignment of every member (an empty one included).
pub fn assign(
    name: &str,
    subscriptions: &Subscriptions,
    topics: &BTreeMap<String, (Uuid, i32)>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    if name == "range" {
        range(subscriptions, topics)
    } else {
        uniform(subscriptions, topics, previous)
    }
}

fn empty_for(subscriptions: &Subscriptions) -> BTreeMap<String, Assignment> {
    subscriptions
        .keys()
        .map(|m| (m.clone(), Assignment::new()))
        .collect()
}

fn range(
    subscriptions: &Subscriptions,
    topics: &BTreeMap<String, (Uuid, i32)>,
) -> BTreeMap<String, Assignment> {
    let mut out = empty_for(subscriptions);
    for (name, &(id, n)) in topics {
        let members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, ts)| ts.contains(name))
            .map(|(m, _)| m)
            .collect();
        if members.is_empty() || n <= 0 {
            continue;
        }
        let k = members.len() as i32;
        let (per, extra) = (n / k, n % k);
        let mut start = 0;
        for (i, m) in members.into_iter().enumerate() {
            let size = per + i32::from((i as i32) < extra);
            if size > 0 {
                let a = out.get_mut(m).expect("every member has an entry");
                a.entry(id).or_default().extend(start..start + size);
            }
            start += size;
        }
    }
    out
}

fn uniform(
    subscriptions: &Subscriptions,
    topics: &BTreeMap<String, (Uuid, i32)>,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out = empty_for(subscriptions);
    let by_id: BTreeMap<Uuid, (&String, i32)> =
        topics.iter().map(|(n, &(id, p))| (id, (n, p))).collect();
    let eligible = |topic: &str| -> Vec<&String> {
        subscriptions
            .iter()
            .filter(|(_, ts)| ts.contains(topic))
            .map(|(m, _)| m)
            .collect()
    };
    // Every partition some member can take, in (topic, partition) order.
    let partitions: Vec<(&String, Uuid, i32)> = topics
        .iter()
        .filter(|(name, _)| subscriptions.values().any(|ts| ts.contains(*name)))
        .flat_map(|(name, &(id, n))| (0..n.max(0)).map(move |p| (name, id, p)))
        .collect();
    let active = subscriptions.values().filter(|ts| !ts.is_empty()).count();
    if partitions.is_empty() || active == 0 {
        return out;
    }
    let quota = partitions.len().div_ceil(active);
    let mut owner: BTreeMap<(Uuid, i32), String> = BTreeMap::new();
    let mut counts: BTreeMap<&String, usize> = subscriptions.keys().map(|m| (m, 0)).collect();
    // 1. Keep what members had, up to the quota.
    for (m, ts) in subscriptions {
        let Some(prev) = previous.get(m) else {
            continue;
        };
        for (t, ps) in prev {
            let Some(&(name, n)) = by_id.get(t) else {
                continue;
            };
            if !ts.contains(name) {
                continue;
            }
            for &p in ps.iter().filter(|&&p| p < n) {
                if counts[m] >= quota || owner.contains_key(&(*t, p)) {
                    continue;
                }
                owner.insert((*t, p), m.clone());
                *counts.get_mut(m).expect("member counted") += 1;
            }
        }
    }
    // 2. The rest go to the least loaded member that can take them.
    for &(name, id, p) in &partitions {
        if owner.contains_key(&(id, p)) {
            continue;
        }
        let Some(m) = eligible(name).into_iter().min_by_key(|m| (counts[*m], *m)) else {
            continue;
        };
        owner.insert((id, p), m.clone());
        *counts.get_mut(m).expect("member counted") += 1;
    }
    // 3. Even out what different subscriptions left uneven: move a
    //    partition while that narrows the gap between two members.
    for _ in 0..partitions.len() {
        let mut moved = false;
        for &(name, id, p) in &partitions {
            let from = owner[&(id, p)].clone();
            let to = eligible(name)
                .into_iter()
                .filter(|m| counts[*m] + 1 < counts[&from])
                .min_by_key(|m| (counts[*m], *m));
            if let Some(to) = to {
                *counts.get_mut(&from).expect("member counted") -= 1;
                *counts.get_mut(to).expect("member counted") += 1;
                owner.insert((id, p), to.clone());
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    for ((t, p), m) in owner {
        out.get_mut(&m)
            .expect("every member has an entry")
            .entry(t)
            .or_default()
            .insert(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(list: &[(&str, i32)]) -> BTreeMap<String, (Uuid, i32)> {
        list.iter()
            .enumerate()
            .map(|(i, (n, p))| (n.to_string(), (Uuid::from_u128(i as u128 + 1), *p)))
            .collect()
    }

    fn subs(list: &[(&str, &[&str])]) -> Subscriptions {
        list.iter()
            .map(|(m, ts)| (m.to_string(), ts.iter().map(|t| t.to_string()).collect()))
            .collect()
    }

    fn sizes(a: &BTreeMap<String, Assignment>) -> Vec<usize> {
        a.values()
            .map(|x| x.values().map(BTreeSet::len).sum())
            .collect()
    }

    fn all_once(a: &BTreeMap<String, Assignment>, total: usize) {
        let mut seen = BTreeSet::new();
        for x in a.values() {
            for (t, ps) in x {
                for p in ps {
                    assert!(seen.insert((*t, *p)), "assigned twice: {t} {p}");
                }
            }
        }
        assert_eq!(seen.len(), total);
    }

    #[test]
    fn range_gives_contiguous_ranges_in_member_order() {
        let t = topics(&[("a", 5)]);
        let s = subs(&[("m1", &["a"]), ("m2", &["a"])]);
        let a = assign("range", &s, &t, &BTreeMap::new());
        let id = Uuid::from_u128(1);
        assert_eq!(a["m1"][&id], BTreeSet::from([0, 1, 2]));
        assert_eq!(a["m2"][&id], BTreeSet::from([3, 4]));
    }

    #[test]
    fn uniform_balances_and_keeps_what_it_can() {
        let t = topics(&[("a", 6), ("b", 3)]);
        let s = subs(&[("m1", &["a", "b"]), ("m2", &["a", "b"])]);
        let first = assign("uniform", &s, &t, &BTreeMap::new());
        all_once(&first, 9);
        let mut sz = sizes(&first);
        sz.sort();
        assert_eq!(sz, vec![4, 5]);
        // A third member: only what it needs moves.
        let s3 = subs(&[
            ("m1", &["a", "b"]),
            ("m2", &["a", "b"]),
            ("m3", &["a", "b"]),
        ]);
        let next = assign("uniform", &s3, &t, &first);
        all_once(&next, 9);
        assert_eq!(sizes(&next), vec![3, 3, 3]);
        for m in ["m1", "m2"] {
            for (tid, ps) in &next[m] {
                assert!(ps.is_subset(&first[m][tid]), "{m} kept only its own");
            }
        }
    }

    #[test]
    fn uniform_respects_different_subscriptions() {
        let t = topics(&[("a", 4), ("b", 4)]);
        let s = subs(&[("m1", &["a"]), ("m2", &["a", "b"]), ("m3", &["b"])]);
        let a = assign("uniform", &s, &t, &BTreeMap::new());
        all_once(&a, 8);
        let ida = Uuid::from_u128(1);
        let idb = Uuid::from_u128(2);
        assert!(!a["m1"].contains_key(&idb));
        assert!(!a["m3"].contains_key(&ida));
        let sz = sizes(&a);
        assert!(
            sz.iter().max().unwrap() - sz.iter().min().unwrap() <= 1,
            "{sz:?}"
        );
    }
}
