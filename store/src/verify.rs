//! `verify`: every object whole, every manifest's references, every chain.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use memshadow_format::store::{
    self as layout, check_data_object, DataSummary, Manifest, StoreMeta, DATA_TRAILER_SIZE,
    META_NAME,
};

use memshadow_format::store_context::{parse_context_name, CoreContext, CONTEXT_DIR};
use memshadow_format::store_plan::{parse_plan_name, StorePlan, PLAN_DIR};
use memshadow_format::version_stats;

use crate::backend::BackendError;
use crate::{local, Store, StoreError};

/// An object kept beside a version.
#[derive(Debug, Clone, Copy)]
enum Beside {
    /// `context/V`: what `memshadow core` needs beside the pages.
    Context,
    /// `plan/V`: the order a follower syncs in.
    Plan,
    /// `stats-V`: what `memshadow report` shows of the version.
    Stats,
}

impl Beside {
    /// The version a listed name is of (None: not this kind's name).
    fn version_of(self, name: &str) -> Option<u64> {
        match self {
            Beside::Context => parse_context_name(name),
            Beside::Plan => parse_plan_name(name),
            Beside::Stats => None,
        }
    }

    /// What is wrong with the object's bytes, if anything.
    fn problem(self, b: &[u8], v: u64, page_size: u32) -> Option<String> {
        match self {
            Beside::Context => CoreContext::decode(b, v).err().map(|e| e.to_string()),
            Beside::Plan => match StorePlan::decode(b, v) {
                Ok(p) if p.page_size == page_size => None,
                Ok(p) => Some(format!("its page size is {}", p.page_size)),
                Err(e) => Some(e.to_string()),
            },
            Beside::Stats => match version_stats::decode(b) {
                Ok((found, _)) if found == v => None,
                Ok((found, _)) => Some(format!("it names version {found}")),
                Err(e) => Some(e.to_string()),
            },
        }
    }

    /// What its damage costs (the version's memory still reads).
    fn consequence(self, v: u64) -> String {
        match self {
            Beside::Context => {
                format!("`memshadow core` of version {v} cannot use it; its memory still reads")
            }
            Beside::Plan => {
                format!("a follower cannot order its sync by it; version {v}'s memory still reads")
            }
            Beside::Stats => format!(
                "`memshadow report` leaves out version {v}'s statistics; its memory still reads"
            ),
        }
    }
}

/// A damaged or missing object and the versions it breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Its name in the store.
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
    /// Versions that need it (directly or through their chain), ascending.
    pub breaks: Vec<u64>,
}

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Manifests checked.
    pub versions: usize,
    /// Data objects checked.
    pub data_objects: usize,
    /// Page records checked.
    pub pages: u64,
    /// Context objects checked (see `memshadow_format::store_context`).
    pub contexts: usize,
    /// Per-version statistics objects checked (`stats-V`, see
    /// `memshadow_format::version_stats`).
    pub version_stats: usize,
    /// Plan objects checked (`plan/V`, see `memshadow_format::store_plan`).
    pub plans: usize,
    /// Damage, `STORE` first, then manifests by version, then data objects by name.
    pub damage: Vec<Damage>,
    /// Objects no readable manifest references (left by an interrupted write or
    /// retention): harmless, removed by the next retention.
    pub orphans: Vec<String>,
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn ok(&self) -> bool {
        self.damage.is_empty()
    }

    /// Versions broken by any damage.
    pub fn broken_versions(&self) -> BTreeSet<u64> {
        self.damage
            .iter()
            .flat_map(|d| d.breaks.iter().copied())
            .collect()
    }
}

fn order(name: &str) -> (u8, &str) {
    if name == META_NAME {
        (0, name)
    } else if name.starts_with(layout::MANIFEST_DIR) {
        (1, name)
    } else {
        (2, name)
    }
}

impl Store {
    /// Checks the whole store (see [`VerifyReport`]). Damage is reported, not returned
    /// as an error; an error means the store could not be listed or read at all.
    pub fn verify(&mut self) -> Result<VerifyReport, StoreError> {
        self.verify_with(&mut |_, _| {})
    }

    /// [`verify`](Self::verify), calling `progress(objects done, objects in all)`.
    pub fn verify_with(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport, StoreError> {
        let ps = u64::from(self.page_size);
        let mut report = VerifyReport::default();
        // Damaged object -> (problem, versions that use it directly).
        let mut found: BTreeMap<String, (String, BTreeSet<u64>)> = BTreeMap::new();
        let mut note = |object: String, problem: String, direct: &[u64]| {
            let e = found.entry(object).or_insert((problem, BTreeSet::new()));
            e.1.extend(direct.iter().copied());
        };
        let numbers = self.version_numbers()?;
        let listed_data: HashMap<String, u64> =
            self.backend.list(layout::DATA_DIR)?.into_iter().collect();
        let contexts = self.backend.list(CONTEXT_DIR)?;
        let plans = self.backend.list(PLAN_DIR)?;
        for (name, _) in contexts.iter().chain(&plans) {
            let file = name.rsplit('/').next().unwrap_or("");
            if local::temp_file_pid(file).is_some() {
                report.orphans.push(name.clone());
            }
        }
        for dir in [layout::MANIFEST_DIR, layout::DATA_DIR] {
            let names = if dir == layout::DATA_DIR {
                listed_data.keys().cloned().collect()
            } else {
                self.backend
                    .list(dir)?
                    .into_iter()
                    .map(|x| x.0)
                    .collect::<Vec<_>>()
            };
            for name in names {
                let file = name.rsplit('/').next().unwrap_or("");
                if local::temp_file_pid(file).is_some() {
                    report.orphans.push(name);
                }
            }
        }
        let total = (numbers.len() + listed_data.len()) as u64;
        let mut done = 0;
        match self.backend.get(META_NAME).map(|b| StoreMeta::decode(&b)) {
            Ok(Ok(m)) if m.page_size == self.page_size => {}
            Ok(Ok(m)) => note(
                META_NAME.into(),
                format!("its page size changed to {}", m.page_size),
                &numbers,
            ),
            Ok(Err(e)) => note(META_NAME.into(), e.to_string(), &numbers),
            Err(e) => note(META_NAME.into(), e.to_string(), &numbers),
        }
        let mut good: BTreeMap<u64, Manifest> = BTreeMap::new();
        for &v in &numbers {
            let name = layout::manifest_name(v);
            match self.backend.get(&name) {
                Ok(b) => match self.decode_manifest(&name, v, &b) {
                    Ok(m) => {
                        good.insert(v, m);
                    }
                    Err(StoreError::Damaged { error, .. }) => note(name, error.to_string(), &[v]),
                    Err(e) => note(name, e.to_string(), &[v]),
                },
                // Dropped by a retention meanwhile.
                Err(BackendError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            report.versions += 1;
            done += 1;
            progress(done, total);
        }
        // Data objects, each read and checked once.
        let mut users: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (v, m) in &good {
            for o in &m.objects {
                users.entry(o.name()).or_default().push(*v);
            }
        }
        let mut summaries: HashMap<String, DataSummary> = HashMap::new();
        for (name, vs) in &users {
            let want = good[&vs[0]]
                .objects
                .iter()
                .find(|o| o.name() == *name)
                .expect("listed above");
            match listed_data.get(name) {
                None => {
                    note(name.clone(), "it is missing".into(), vs);
                    continue;
                }
                Some(&size) if size != want.size => {
                    note(
                        name.clone(),
                        format!("{size} bytes, its manifest says {}", want.size),
                        vs,
                    );
                    continue;
                }
                Some(_) => {}
            }
            let bytes = match self.backend.get(name) {
                Ok(b) => b,
                Err(BackendError::NotFound(_)) => {
                    note(name.clone(), "it is missing".into(), vs);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match check_data_object(&bytes) {
                Ok(s)
                    if (s.version, s.nonce) == (want.version, want.nonce)
                        && s.page_size == self.page_size =>
                {
                    report.pages += s.records.len() as u64;
                    summaries.insert(name.clone(), s);
                }
                Ok(s) => note(
                    name.clone(),
                    format!(
                        "its header names version {} nonce {:016x} page size {}",
                        s.version, s.nonce, s.page_size
                    ),
                    vs,
                ),
                Err(e) => note(name.clone(), e.to_string(), vs),
            }
            report.data_objects += 1;
            done += 1;
            progress(done, total);
        }
        // Every run points at the records of its pages.
        for (v, m) in &good {
            for run in &m.runs {
                let obj = &m.objects[run.object as usize];
                let Some(s) = summaries.get(&obj.name()) else {
                    continue; // damage noted above
                };
                let fits = s
                    .records
                    .binary_search_by_key(&run.offset, |r| r.0)
                    .is_ok_and(|i| {
                        let end = s
                            .records
                            .get(i + run.pages as usize)
                            .map_or(obj.size - DATA_TRAILER_SIZE as u64, |r| r.0);
                        i + run.pages as usize <= s.records.len()
                            && (0..run.pages as usize)
                                .all(|k| s.records[i + k].1 == run.addr + k as u64 * ps)
                            && end == run.offset + run.bytes
                    });
                if !fits {
                    note(
                        layout::manifest_name(*v),
                        format!(
                            "its run at {:#x} ({} pages) does not match the records of {}",
                            run.addr,
                            run.pages,
                            obj.name()
                        ),
                        &[*v],
                    );
                }
            }
            if let Some(p) = m.prev() {
                if !numbers.contains(&p) {
                    note(
                        layout::manifest_name(p),
                        format!("it is missing (version {v} builds on it)"),
                        &[*v],
                    );
                }
            }
        }
        // The objects kept beside versions (contexts, plans, statistics): each checked
        // whole; damage breaks no version's memory, only what that object serves.
        let mut beside: Vec<(String, u64, Beside)> = Vec::new();
        for (listed, kind) in [(&contexts, Beside::Context), (&plans, Beside::Plan)] {
            for (name, _) in listed {
                let Some(v) = kind.version_of(name) else {
                    continue;
                };
                if numbers.contains(&v) {
                    beside.push((name.clone(), v, kind));
                } else {
                    report.orphans.push(name.clone());
                }
            }
        }
        // A version has no statistics when the recorder could not read them (or
        // predates them).
        beside.extend(
            numbers
                .iter()
                .map(|&v| (version_stats::version_stats_name(v), v, Beside::Stats)),
        );
        for (name, v, kind) in beside {
            let bytes = match self.backend.get(&name) {
                Ok(b) => b,
                Err(BackendError::NotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            if let Some(p) = kind.problem(&bytes, v, self.page_size) {
                note(name, format!("{p} ({})", kind.consequence(v)), &[]);
            }
            match kind {
                Beside::Context => report.contexts += 1,
                Beside::Plan => report.plans += 1,
                Beside::Stats => report.version_stats += 1,
            }
        }
        // What each damage breaks: its direct users and every version built on them.
        for (object, (problem, direct)) in found {
            let mut broken = direct;
            for (v, m) in &good {
                if m.prev().is_some_and(|p| broken.contains(&p)) {
                    broken.insert(*v);
                }
            }
            report.damage.push(Damage {
                object,
                problem,
                breaks: broken.into_iter().collect(),
            });
        }
        report
            .damage
            .sort_by(|a, b| order(&a.object).cmp(&order(&b.object)));
        // Data of a version whose manifest is damaged is that version's, not an orphan.
        let unreadable: BTreeSet<u64> = numbers
            .iter()
            .copied()
            .filter(|v| !good.contains_key(v))
            .collect();
        let mut orphans: Vec<String> = listed_data
            .keys()
            .filter(|n| {
                layout::parse_data_name(n).is_some_and(|(v, _)| !unreadable.contains(&v))
                    && !users.contains_key(*n)
            })
            .cloned()
            .collect();
        orphans.sort();
        report.orphans.extend(orphans);
        Ok(report)
    }
}
