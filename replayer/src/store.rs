//! The replayer's checkpoint store: machine states with their memory as a forest of page
//! deltas, and the bookkeeping that lets a restore write only the pages that differ.
//!
//! Every node holds the machine state at a position and either all of memory (a root: the
//! boot state, or a full checkpoint of the trace) or the pages changed since its parent
//! node. The page content of node T is found by walking from T towards its root.
//!
//! The *anchor* is the node the machine's memory last equalled (by restore or by taking a
//! checkpoint); since then only pages in the KVM dirty log (plus `extra_dirty`) changed.
//! Restoring T therefore writes the dirty pages plus the pages that differ between the
//! anchor and T, which are the deltas on the tree path between them; without a common root
//! it writes all of memory.
//!
//! The store keeps to a memory budget by evicting nodes whose loss costs least: the gap
//! they leave, divided by their distance from where the user is (rr keeps checkpoints dense
//! near the current position and sparse far away). An evicted node's pages are merged into
//! its children, so no remaining node loses information.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ttvm_vmm::machine::pages::{Page, PageSet};
use ttvm_vmm::machine::snapshot::MachineState;
use ttvm_vmm::run::singlestep::Position;

/// A node's id within the store.
pub type NodeId = u32;

/// Where a node came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The machine as built, before the first step (never evicted).
    Boot,
    /// A checkpoint file of the trace (by its id).
    Trace(u32),
    /// Taken by this replayer.
    Replay,
}

/// A checkpoint: a state of type `S` (the machine's, in the replayer) and its memory.
#[derive(Debug)]
pub struct Node<S = MachineState> {
    pub position: Position,
    pub state: Arc<S>,
    pub parent: Option<NodeId>,
    pub pages: PageSet,
    pub origin: Origin,
}

impl<S> Node<S> {
    fn cost(&self) -> usize {
        self.pages.data_bytes() + 16 * 1024
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("checkpoint node {0} is missing from the store")]
    Missing(NodeId),
}

/// What to write to turn the machine's memory into a node's.
pub enum PagePlan {
    /// Exactly these pages.
    Pages(BTreeSet<u32>),
    /// All of memory.
    All,
}

#[derive(Debug)]
pub struct CheckpointStore<S = MachineState> {
    nodes: BTreeMap<NodeId, Node<S>>,
    next_id: NodeId,
    budget: usize,
    used: usize,
    anchor: Option<NodeId>,
    /// Pages changed relative to the anchor that the KVM dirty log no longer shows (the
    /// log was read when a node was evicted or taken).
    extra_dirty: BTreeSet<u32>,
    pub evictions: u64,
}

impl<S> CheckpointStore<S> {
    pub fn new(budget: usize) -> Self {
        CheckpointStore {
            nodes: BTreeMap::new(),
            next_id: 0,
            budget,
            used: 0,
            anchor: None,
            extra_dirty: BTreeSet::new(),
            evictions: 0,
        }
    }

    pub fn get(&self, id: NodeId) -> Option<&Node<S>> {
        self.nodes.get(&id)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Bytes held by the nodes.
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Nodes in position order (id, position, origin, bytes).
    pub fn list(&self) -> Vec<(NodeId, Position, Origin, usize)> {
        let mut v: Vec<_> = self
            .nodes
            .iter()
            .map(|(&id, n)| (id, n.position, n.origin, n.cost()))
            .collect();
        v.sort_by_key(|&(id, pos, ..)| (pos, id));
        v
    }

    /// The node at the greatest position <= `pos` (the latest taken on ties).
    pub fn best_at_or_before(&self, pos: Position) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.position <= pos)
            .max_by_key(|(&id, n)| (n.position, id))
            .map(|(&id, _)| id)
    }

    /// The node of trace checkpoint `trace_id`, if loaded.
    pub fn trace_node(&self, trace_id: u32) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, n)| n.origin == Origin::Trace(trace_id))
            .map(|(&id, _)| id)
    }

    /// Adds a node. The caller states whether the machine's memory now equals it (a node
    /// just taken from the running machine: its dirty log was read and is empty).
    pub fn insert(&mut self, node: Node<S>, now_anchor: bool) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        self.used += node.cost();
        self.nodes.insert(id, node);
        if now_anchor {
            self.anchor = Some(id);
            self.extra_dirty.clear();
        }
        id
    }

    /// The anchor (see the module docs).
    pub fn anchor(&self) -> Option<NodeId> {
        self.anchor
    }

    /// The machine's memory now equals node `id`'s.
    pub fn set_anchor(&mut self, id: NodeId) {
        self.anchor = Some(id);
        self.extra_dirty.clear();
    }

    fn ancestors(&self, id: NodeId) -> Result<Vec<NodeId>, StoreError> {
        let mut chain = vec![id];
        let mut cur = self.nodes.get(&id).ok_or(StoreError::Missing(id))?;
        while let Some(p) = cur.parent {
            chain.push(p);
            cur = self.nodes.get(&p).ok_or(StoreError::Missing(p))?;
        }
        Ok(chain)
    }

    /// The pages to write to turn memory (= anchor + `dirty`) into node `target`'s.
    pub fn plan(&self, target: NodeId, dirty: BTreeSet<u32>) -> Result<PagePlan, StoreError> {
        let Some(anchor) = self.anchor else {
            return Ok(PagePlan::All);
        };
        let from = self.ancestors(anchor)?;
        let to = self.ancestors(target)?;
        let Some(lca) = to.iter().find(|n| from.contains(n)).copied() else {
            return Ok(PagePlan::All);
        };
        let mut pages = dirty;
        pages.extend(self.extra_dirty.iter().copied());
        for chain in [&from, &to] {
            for id in chain.iter().take_while(|&&n| n != lca) {
                let node = self.nodes.get(id).ok_or(StoreError::Missing(*id))?;
                pages.extend(node.pages.pages.keys().copied());
            }
        }
        Ok(PagePlan::Pages(pages))
    }

    /// Page `n` as of node `id`.
    pub fn page_at(&self, id: NodeId, n: u32) -> Result<&Page, StoreError> {
        static ZERO: Page = Page::Zero;
        let mut cur = id;
        loop {
            let node = self.nodes.get(&cur).ok_or(StoreError::Missing(cur))?;
            if let Some(page) = node.pages.pages.get(&n) {
                return Ok(page);
            }
            match node.parent {
                Some(p) if !node.pages.full => cur = p,
                _ => return Ok(&ZERO),
            }
        }
    }

    /// Evicts nodes until the store fits its budget, keeping nodes near `current`.
    /// `interval` is the replay checkpoint spacing (the distance scale).
    pub fn enforce_budget(&mut self, current: Position, interval: u64) {
        while self.used > self.budget {
            let Some(victim) = self.cheapest_to_lose(current, interval) else {
                return;
            };
            self.evict(victim);
        }
    }

    fn cheapest_to_lose(&self, current: Position, interval: u64) -> Option<NodeId> {
        let order = self.list();
        let mut best: Option<(f64, NodeId)> = None;
        for (i, &(id, pos, origin, _)) in order.iter().enumerate() {
            if origin == Origin::Boot {
                continue;
            }
            let prev = if i > 0 { order[i - 1].1 } else { 0 };
            let next = order.get(i + 1).map_or(current.max(pos), |n| n.1);
            let gap = (next - prev) as f64;
            let distance = pos.abs_diff(current) as f64 + interval.max(1) as f64;
            let cost = gap / distance;
            if best.is_none_or(|(c, _)| cost < c) {
                best = Some((cost, id));
            }
        }
        best.map(|(_, id)| id)
    }

    /// Removes node `id`, merging its pages into its children.
    pub fn evict(&mut self, id: NodeId) {
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        self.used = self.used.saturating_sub(node.cost());
        self.evictions += 1;
        let children: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.parent == Some(id))
            .map(|(&c, _)| c)
            .collect();
        for c in children {
            if let Some(child) = self.nodes.get_mut(&c) {
                let before = child.cost();
                for (&n, page) in &node.pages.pages {
                    child.pages.pages.entry(n).or_insert_with(|| page.clone());
                }
                child.parent = node.parent;
                if node.pages.full {
                    child.pages.full = true;
                }
                let after = child.cost();
                self.used = self.used + after - before;
            }
        }
        if self.anchor == Some(id) {
            self.anchor = node.parent;
            if node.parent.is_some() {
                self.extra_dirty.extend(node.pages.pages.keys().copied());
            } else {
                self.extra_dirty.clear();
            }
        }
    }

    /// Takes the pages noted as changed since the anchor.
    pub fn take_extra_dirty(&mut self) -> BTreeSet<u32> {
        std::mem::take(&mut self.extra_dirty)
    }

    /// Notes pages changed since the anchor that the dirty log will not show again.
    pub fn add_dirty(&mut self, pages: impl IntoIterator<Item = u32>) {
        self.extra_dirty.extend(pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(b: u8) -> Page {
        Page::Data(vec![b; 4096].into_boxed_slice())
    }

    fn set(full: bool, pages: &[(u32, Page)]) -> PageSet {
        PageSet {
            full,
            pages: pages.iter().cloned().collect(),
        }
    }

    fn node(pos: Position, parent: Option<NodeId>, pages: PageSet, origin: Origin) -> Node<()> {
        Node {
            position: pos,
            state: Arc::new(()),
            parent,
            pages,
            origin,
        }
    }

    #[test]
    fn pages_resolve_through_the_chain_and_survive_eviction() {
        let mut s = CheckpointStore::<()>::new(usize::MAX);
        let root = s.insert(
            node(
                0,
                None,
                set(true, &[(1, data(1)), (2, data(2))]),
                Origin::Boot,
            ),
            true,
        );
        let a = s.insert(
            node(
                10,
                Some(root),
                set(false, &[(2, data(3)), (3, data(4))]),
                Origin::Replay,
            ),
            true,
        );
        let b = s.insert(
            node(20, Some(a), set(false, &[(1, Page::Zero)]), Origin::Replay),
            true,
        );
        assert_eq!(s.page_at(b, 1).unwrap(), &Page::Zero);
        assert_eq!(s.page_at(b, 2).unwrap(), &data(3));
        assert_eq!(s.page_at(a, 1).unwrap(), &data(1));
        assert_eq!(s.page_at(root, 3).unwrap(), &Page::Zero);
        assert_eq!(s.page_at(b, 9).unwrap(), &Page::Zero);
        // From b (anchor) to root: pages of b and a differ.
        match s.plan(root, BTreeSet::from([7])).unwrap() {
            PagePlan::Pages(p) => assert_eq!(p, BTreeSet::from([1, 2, 3, 7])),
            PagePlan::All => panic!("same tree"),
        }
        s.evict(a);
        assert_eq!(s.page_at(b, 2).unwrap(), &data(3));
        assert_eq!(s.page_at(b, 3).unwrap(), &data(4));
        assert_eq!(s.get(b).unwrap().parent, Some(root));
        s.set_anchor(root);
        s.evict(root);
        // b became a root holding everything.
        assert!(s.get(b).unwrap().pages.full);
        assert_eq!(s.page_at(b, 2).unwrap(), &data(3));
        assert_eq!(s.page_at(b, 1).unwrap(), &Page::Zero);
        assert!(matches!(s.plan(b, BTreeSet::new()).unwrap(), PagePlan::All));
    }

    #[test]
    fn eviction_keeps_nodes_near_the_current_position() {
        let mut s = CheckpointStore::<()>::new(usize::MAX);
        let root = s.insert(node(0, None, set(true, &[]), Origin::Boot), true);
        let mut prev = root;
        for i in 1..=20u64 {
            prev = s.insert(
                node(
                    i * 1000,
                    Some(prev),
                    set(false, &[(i as u32, data(1))]),
                    Origin::Replay,
                ),
                true,
            );
        }
        let per_node = s.used_bytes() / 21;
        s.budget = per_node * 8;
        s.enforce_budget(20_000, 1000);
        let kept: Vec<Position> = s.list().iter().map(|n| n.1).collect();
        assert!(kept.len() <= 8, "{kept:?}");
        assert!(kept.contains(&0), "the boot state stays: {kept:?}");
        // Dense near 20,000, sparse far away.
        assert!(kept.iter().any(|&p| p >= 19_000), "{kept:?}");
        let near = kept.iter().filter(|&&p| p >= 15_000).count();
        let far = kept.iter().filter(|&&p| p > 0 && p < 10_000).count();
        assert!(near > far, "{kept:?}");
        // Every kept node still resolves every page it had.
        for (id, pos, ..) in s.list() {
            for i in 1..=20u32 {
                let want = if u64::from(i) * 1000 <= pos {
                    data(1)
                } else {
                    Page::Zero
                };
                assert_eq!(s.page_at(id, i).unwrap(), &want, "page {i} at {pos}");
            }
        }
    }
}
