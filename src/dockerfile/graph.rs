//! The stage graph's algorithms: what a stage needs, a build order, the waves of stages that
//! can build at once, and cycle detection. Pure functions of the graph.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use super::StageGraph;

impl StageGraph {
    /// Every stage that `index` needs, transitively, nearest first (breadth-first from `index`;
    /// ties in Dockerfile order), without `index` itself.
    pub fn ancestors(&self, index: usize) -> Vec<usize> {
        let mut seen = BTreeSet::from([index]);
        let mut result = Vec::new();
        let mut frontier = vec![index];
        while !frontier.is_empty() {
            // A BTreeSet per distance gives "ties in Dockerfile order".
            let mut next = BTreeSet::new();
            for stage in frontier {
                for &dep in self.deps_of(stage) {
                    if dep < self.stages.len() && seen.insert(dep) {
                        next.insert(dep);
                    }
                }
            }
            result.extend(next.iter().copied());
            frontier = next.into_iter().collect();
        }
        result
    }

    /// A dependency order of all stages: every stage after those it needs; ties in Dockerfile
    /// order (Kahn's algorithm with the smallest index first).
    ///
    /// Stages on a cycle, which only a hand-built graph can have, come last in index order.
    pub fn topo_order(&self) -> Vec<usize> {
        let n = self.stages.len();
        let mut waiting_on = vec![0usize; n];
        let mut dependents = vec![Vec::new(); n];
        for stage in 0..n {
            for &dep in self.deps_of(stage) {
                if let (Some(count), Some(list)) =
                    (waiting_on.get_mut(stage), dependents.get_mut(dep))
                {
                    *count += 1;
                    list.push(stage);
                }
            }
        }
        let mut ready: BinaryHeap<Reverse<usize>> = (0..n)
            .filter(|&i| waiting_on.get(i) == Some(&0))
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(n);
        let mut placed = vec![false; n];
        while let Some(Reverse(stage)) = ready.pop() {
            order.push(stage);
            if let Some(slot) = placed.get_mut(stage) {
                *slot = true;
            }
            for &dependent in dependents.get(stage).into_iter().flatten() {
                if let Some(count) = waiting_on.get_mut(dependent) {
                    *count -= 1;
                    if *count == 0 {
                        ready.push(Reverse(dependent));
                    }
                }
            }
        }
        order.extend((0..n).filter(|&i| placed.get(i) == Some(&false)));
        order
    }

    /// All stages grouped in "waves": wave k holds the stages whose needs are all in earlier
    /// waves, i.e. the stages that can build in parallel once the earlier waves are done.
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let all: Vec<usize> = (0..self.stages.len()).collect();
        self.levels_of(&all)
    }

    /// The stages in `set` grouped in waves like [`StageGraph::levels`]; needs outside `set`
    /// count as already built. Pass a stage and its [`StageGraph::ancestors`] for the waves that
    /// build one target. Each wave is in index order.
    pub fn levels_of(&self, set: &[usize]) -> Vec<Vec<usize>> {
        let members: BTreeSet<usize> = set
            .iter()
            .copied()
            .filter(|&i| i < self.stages.len())
            .collect();
        let mut depth = BTreeMap::new();
        let mut levels: Vec<Vec<usize>> = Vec::new();
        // Topological order means a stage's needs have their depth before it does.
        for stage in self.topo_order() {
            if !members.contains(&stage) {
                continue;
            }
            let level = self
                .deps_of(stage)
                .iter()
                .filter_map(|dep| depth.get(dep))
                .map(|&d: &usize| d + 1)
                .max()
                .unwrap_or(0);
            depth.insert(stage, level);
            while levels.len() <= level {
                levels.push(Vec::new());
            }
            if let Some(wave) = levels.get_mut(level) {
                wave.push(stage);
            }
        }
        for wave in &mut levels {
            wave.sort_unstable();
        }
        levels
    }

    fn deps_of(&self, index: usize) -> &[usize] {
        self.stages
            .get(index)
            .map_or(&[], |stage| stage.deps.as_slice())
    }
}

/// Finds a dependency cycle, as the stages along it with the first repeated at the end.
/// Iterative depth-first search, so a long chain of stages cannot overflow the stack.
pub(super) fn find_cycle(graph: &StageGraph) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let n = graph.stages.len();
    let mut marks = vec![Mark::New; n];
    for root in 0..n {
        if marks.get(root) != Some(&Mark::New) {
            continue;
        }
        if let Some(m) = marks.get_mut(root) {
            *m = Mark::OnPath;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        while let Some((stage, next)) = path.last_mut() {
            let stage = *stage;
            let Some(&dep) = graph.deps_of(stage).get(*next) else {
                if let Some(m) = marks.get_mut(stage) {
                    *m = Mark::Done;
                }
                path.pop();
                continue;
            };
            *next += 1;
            match marks.get(dep) {
                Some(Mark::New) => {
                    if let Some(m) = marks.get_mut(dep) {
                        *m = Mark::OnPath;
                    }
                    path.push((dep, 0));
                }
                Some(Mark::OnPath) => {
                    let start = path.iter().position(|&(s, _)| s == dep)?;
                    let mut cycle: Vec<usize> = path
                        .get(start..)
                        .unwrap_or_default()
                        .iter()
                        .map(|&(s, _)| s)
                        .collect();
                    cycle.push(dep);
                    return Some(cycle);
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::test_util::*;
    use crate::dockerfile::Stage;

    #[test]
    fn topo_order_puts_later_stages_first_when_needed() {
        // `first` copies from a stage defined after it, which BuildKit allows.
        let g = graph(
            "FROM alpine AS first\nCOPY --from=second /x /x\nFROM alpine AS second\nFROM first AS third\n",
        );
        assert_eq!(
            g.stages.iter().map(|s| s.deps.clone()).collect::<Vec<_>>(),
            [vec![1], vec![], vec![0]]
        );
        assert_eq!(g.topo_order(), [1, 0, 2]);
        assert_eq!(g.levels(), [vec![1], vec![0], vec![2]]);
        assert_eq!(g.ancestors(2), [0, 1]);
    }

    #[test]
    fn ancestors_are_nearest_first_then_in_file_order() {
        let g = graph(
            "FROM a AS s0\nFROM a AS s1\nFROM s0 AS s2\nFROM a AS s3\nCOPY --from=s1 / /\n\
             FROM a AS s4\nCOPY --from=s3 / /\nCOPY --from=s2 / /\n",
        );
        assert_eq!(g.ancestors(4), [2, 3, 0, 1]);
        assert_eq!(g.ancestors(99), Vec::<usize>::new());
    }

    #[test]
    fn hand_built_graphs_do_not_panic() {
        let stage = |index: usize, deps: Vec<usize>| Stage {
            index,
            name: None,
            base: "x".to_string(),
            base_stage: None,
            platform: None,
            deps,
            line: 1,
            images: vec![],
            remote: vec![],
            runs: vec![],
            cache_mounts: vec![],
        };
        let g = StageGraph {
            stages: vec![stage(0, vec![1, 7]), stage(1, vec![0]), stage(2, vec![])],
            frontend: None,
        };
        assert_eq!(g.topo_order(), [2, 0, 1]);
        assert_eq!(g.ancestors(0), [1]);
        assert_eq!(g.levels().concat().len(), 3);
        assert_eq!(find_cycle(&g), Some(vec![0, 1, 0]));
        let empty = StageGraph {
            stages: vec![],
            frontend: None,
        };
        assert_eq!(empty.last(), 0);
        assert_eq!(empty.topo_order(), Vec::<usize>::new());
        assert_eq!(empty.levels(), Vec::<Vec<usize>>::new());
        assert_eq!(empty.name(3), "stage-3");
    }

    #[test]
    fn cycles() {
        assert_eq!(
            error("FROM alpine AS a\nCOPY --from=b /x /x\nFROM alpine AS b\nCOPY --from=a /y /y\n"),
            "line 2: dependency cycle between stages `a` -> `b` -> `a`"
        );
        assert_eq!(
            error("FROM alpine AS stage0\nCOPY --from=stage2 f1 /sub/\nFROM busybox AS stage1\nCOPY --from=stage0 f2 /sub/\nFROM busybox AS stage2\nCOPY --from=stage1 f2 /sub/\n"),
            "line 2: dependency cycle between stages `stage0` -> `stage2` -> `stage1` -> `stage0`"
        );
        assert_eq!(
            error("FROM alpine AS a\nRUN true\nCOPY --from=A /x /x\n"),
            "line 3: stage `a` depends on itself"
        );
        assert_eq!(
            error("FROM alpine\nCOPY --from=0 /x /x\n"),
            "line 2: stage `stage-0` depends on itself"
        );
        assert_eq!(
            error("FROM alpine AS a\nRUN --mount=from=b true\nFROM a AS b\n"),
            "line 2: dependency cycle between stages `a` -> `b` -> `a`"
        );
    }
}
