//! The task assignor of streams groups: balanced and sticky, like Kafka's
//! `StickyTaskAssignor` ("sticky", the only one Kafka 4.4 has). Active
//! tasks are spread evenly over the members (each stream thread is a
//! member, so a process with more threads takes more tasks) and stay with
//! their owner unless balance needs them elsewhere; a task that moves
//! prefers a member that kept it as a standby, then the least loaded
//! process. Each stateful task then gets up to `num_standby_replicas`
//! standby copies, each in another process than its other copies. No
//! warm-up tasks, as in Kafka 4.4.
//!
//! Pure functions, run by the group coordinator on its shard.

use std::collections::{BTreeMap, BTreeSet};

use super::streams::{TaskSet, Tasks};

fn owner_map(
    previous: &BTreeMap<String, TaskSet>,
    kind: fn(&TaskSet) -> &Tasks,
) -> BTreeMap<(String, i32), Vec<String>> {
    let mut out: BTreeMap<(String, i32), Vec<String>> = BTreeMap::new();
    for (member, ts) in previous {
        for (s, ps) in kind(ts) {
            for &p in ps {
                out.entry((s.clone(), p)).or_default().push(member.clone());
            }
        }
    }
    out
}

/// The target assignment of every member (an empty one included).
/// `members`: member id -> process id; `tasks`: subtopology -> task count;
/// `stateful`: the subtopologies whose tasks get standbys; `previous`:
/// what each member holds now.
pub fn assign(
    members: &BTreeMap<String, String>,
    tasks: &BTreeMap<String, i32>,
    stateful: &BTreeSet<String>,
    previous: &BTreeMap<String, TaskSet>,
    num_standby_replicas: usize,
) -> BTreeMap<String, TaskSet> {
    let mut out: BTreeMap<String, TaskSet> = members
        .keys()
        .map(|m| (m.clone(), TaskSet::default()))
        .collect();
    if members.is_empty() {
        return out;
    }
    let all: Vec<(String, i32)> = tasks
        .iter()
        .flat_map(|(s, &n)| (0..n.max(0)).map(move |p| (s.clone(), p)))
        .collect();
    let prev_active = owner_map(previous, |t| &t.active);
    let prev_standby = owner_map(previous, |t| &t.standby);
    let process_size: BTreeMap<&String, usize> =
        members.values().fold(BTreeMap::new(), |mut m, p| {
            *m.entry(p).or_default() += 1;
            m
        });
    let (n, m) = (all.len(), members.len());
    let floor = n / m;
    let mut extra = n % m;
    let mut load: BTreeMap<&String, usize> = members.keys().map(|k| (k, 0)).collect();
    let mut process_load: BTreeMap<&String, usize> = process_size.keys().map(|p| (*p, 0)).collect();
    let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
    // Under its share: below the even share, or at it while places for
    // one more remain.
    let open = |l: usize, extra: usize| l < floor || (l == floor && extra > 0);
    let give = |t: &(String, i32),
                id: &String,
                load: &mut BTreeMap<&String, usize>,
                process_load: &mut BTreeMap<&String, usize>,
                extra: &mut usize,
                owner: &mut BTreeMap<(String, i32), String>| {
        let l = load.get_mut(id).expect("member");
        if *l == floor {
            *extra -= 1;
        }
        *l += 1;
        *process_load.get_mut(&members[id]).expect("process") += 1;
        owner.insert(t.clone(), id.clone());
    };
    // 1. A task stays with its active owner up to the even share.
    for cap in [floor, floor + 1] {
        for t in &all {
            if owner.contains_key(t) {
                continue;
            }
            let prev = prev_active
                .get(t)
                .and_then(|ms| ms.iter().find(|id| members.contains_key(*id)));
            if let Some(id) = prev {
                if load[id] < cap && open(load[id], extra) {
                    give(t, id, &mut load, &mut process_load, &mut extra, &mut owner);
                }
            }
        }
    }
    // The load of a member's process per member, then its own: the least
    // loaded first (ties: member id).
    let rank = |id: &String, load: &BTreeMap<&String, usize>, pl: &BTreeMap<&String, usize>| {
        let p = &members[id];
        // Compared as fractions: tasks of the process over its members.
        (pl[p] * 1_000_000 / process_size[p], load[id], id.clone())
    };
    // 2. Then to a member that held it as a standby (its state is warm).
    for t in &all {
        if owner.contains_key(t) {
            continue;
        }
        let warm = prev_standby.get(t).and_then(|ms| {
            ms.iter()
                .filter(|id| members.contains_key(*id) && open(load[*id], extra))
                .min_by_key(|id| rank(id, &load, &process_load))
                .cloned()
        });
        if let Some(id) = warm {
            give(t, &id, &mut load, &mut process_load, &mut extra, &mut owner);
        }
    }
    // 3. The rest: the least loaded process, its least loaded member.
    for t in &all {
        if owner.contains_key(t) {
            continue;
        }
        let id = members
            .keys()
            .filter(|id| open(load[*id], extra))
            .min_by_key(|id| rank(id, &load, &process_load))
            .cloned()
            .expect("a member below its share while tasks remain");
        give(t, &id, &mut load, &mut process_load, &mut extra, &mut owner);
    }
    for ((s, p), id) in &owner {
        out.get_mut(id)
            .expect("member")
            .active
            .entry(s.clone())
            .or_default()
            .insert(*p);
    }
    if num_standby_replicas == 0 {
        return out;
    }
    // Standbys of stateful tasks, each in a process holding no other copy:
    // the previous active owner first (its state is there), then a previous
    // standby, then the least loaded.
    let mut standby_load: BTreeMap<&String, usize> = members.keys().map(|k| (k, 0)).collect();
    for t in all.iter().filter(|t| stateful.contains(&t.0)) {
        let mut used: BTreeSet<&String> = BTreeSet::from([&members[&owner[t]]]);
        for _ in 0..num_standby_replicas {
            let eligible =
                |id: &&String| members.contains_key(*id) && !used.contains(&members[*id]);
            let sticky = prev_active
                .get(t)
                .into_iter()
                .chain(prev_standby.get(t))
                .flatten()
                .find(|id| eligible(id))
                .cloned();
            let pick = sticky.or_else(|| {
                members
                    .keys()
                    .filter(|id| eligible(id))
                    .min_by_key(|id| (standby_load[*id] + load[*id], (*id).clone()))
                    .cloned()
            });
            let Some(id) = pick else { break };
            *standby_load.get_mut(&id).expect("member") += 1;
            used.insert(&members[&id]);
            out.get_mut(&id)
                .expect("member")
                .standby
                .entry(t.0.clone())
                .or_default()
                .insert(t.1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(spec: &[(&str, &str)]) -> BTreeMap<String, String> {
        spec.iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect()
    }

    fn all_stateful(tasks: &BTreeMap<String, i32>) -> BTreeSet<String> {
        tasks.keys().cloned().collect()
    }

    fn actives(a: &BTreeMap<String, TaskSet>) -> Vec<usize> {
        a.values()
            .map(|t| super::super::streams::count(&t.active))
            .collect()
    }

    #[test]
    fn spreads_active_tasks_evenly_and_each_once() {
        let ms = members(&[("a", "p1"), ("b", "p1"), ("c", "p2")]);
        let tasks = BTreeMap::from([("0".to_string(), 4), ("1".to_string(), 3)]);
        let a = assign(&ms, &tasks, &all_stateful(&tasks), &BTreeMap::new(), 0);
        let mut counts = actives(&a);
        counts.sort();
        assert_eq!(counts, vec![2, 2, 3]);
        let mut seen = BTreeSet::new();
        for ts in a.values() {
            for (s, ps) in &ts.active {
                for p in ps {
                    assert!(seen.insert((s.clone(), *p)), "task {s}_{p} twice");
                }
            }
        }
        assert_eq!(seen.len(), 7);
    }

    #[test]
    fn a_new_member_takes_tasks_only_from_overloaded_ones() {
        let tasks = BTreeMap::from([("0".to_string(), 4)]);
        let st = all_stateful(&tasks);
        let one = assign(
            &members(&[("a", "p1"), ("b", "p2")]),
            &tasks,
            &st,
            &BTreeMap::new(),
            0,
        );
        let two = assign(
            &members(&[("a", "p1"), ("b", "p2"), ("c", "p3"), ("d", "p4")]),
            &tasks,
            &st,
            &one,
            0,
        );
        assert_eq!(actives(&two), vec![1, 1, 1, 1]);
        for id in ["a", "b"] {
            let kept = &two[id].active["0"];
            assert!(
                kept.is_subset(&one[id].active["0"]),
                "{id} kept one of its own"
            );
        }
        // Nothing moves when nothing changes.
        assert_eq!(
            assign(
                &members(&[("a", "p1"), ("b", "p2"), ("c", "p3"), ("d", "p4")]),
                &tasks,
                &st,
                &two,
                0
            ),
            two
        );
    }

    #[test]
    fn standbys_go_to_other_processes_only() {
        let ms = members(&[("a", "p1"), ("b", "p1"), ("c", "p2")]);
        let tasks = BTreeMap::from([("0".to_string(), 3)]);
        let a = assign(&ms, &tasks, &all_stateful(&tasks), &BTreeMap::new(), 1);
        for (id, ts) in &a {
            for (s, ps) in &ts.standby {
                for p in ps {
                    let active_owner = a
                        .iter()
                        .find(|(_, t)| t.active.get(s).is_some_and(|q| q.contains(p)))
                        .unwrap()
                        .0;
                    assert_ne!(
                        ms[id], ms[active_owner],
                        "standby {s}_{p} in the active's process"
                    );
                }
            }
        }
        let standbys: usize = a
            .values()
            .map(|t| super::super::streams::count(&t.standby))
            .sum();
        assert_eq!(standbys, 3, "each task has its one standby: {a:?}");
        // One process: no standby is possible.
        let solo = assign(
            &members(&[("a", "p1"), ("b", "p1")]),
            &tasks,
            &all_stateful(&tasks),
            &BTreeMap::new(),
            1,
        );
        assert!(solo.values().all(|t| t.standby.is_empty()));
        // A stateless subtopology gets no standbys.
        let stateless = assign(&ms, &tasks, &BTreeSet::new(), &BTreeMap::new(), 1);
        assert!(stateless.values().all(|t| t.standby.is_empty()));
    }
}
