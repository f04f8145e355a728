package ha

import (
	"sync"
	"time"
)

// Transport sends an advert to every peer.
type Transport interface {
	Send(b []byte) error
}

// Node drives one FSM: it signs and sends adverts while master, checks
// and counts every received advert, and reports role changes. The clock is
// passed in, so the node runs in tests as it runs for real.
type Node struct {
	fsm      *FSM
	key      []byte
	boot     uint64
	send     Transport
	revision func() uint64
	// OnRole is called (outside the node's lock) after each role change.
	OnRole func(Role)

	mu         sync.Mutex
	seq        uint64
	guard      ReplayGuard
	nextAdvert time.Time
	bad        map[string]uint64
	lastSeen   map[string]time.Time
	peerRev    map[string]uint64
	// Until this time, report that two masters were seen: set when this
	// node, as master, hears another master (a healed partition).
	dualUntil time.Time
}

// NewNode starts a node as backup. boot must grow across restarts (the
// start time in unix nanoseconds does).
func NewNode(fsm *FSM, key []byte, boot uint64, send Transport, revision func() uint64) *Node {
	return &Node{fsm: fsm, key: key, boot: boot, send: send, revision: revision,
		bad: map[string]uint64{}, lastSeen: map[string]time.Time{}, peerRev: map[string]uint64{}}
}

func (n *Node) advert(prio uint8) ([]byte, error) {
	n.seq++
	rev := uint64(0)
	if n.revision != nil {
		rev = n.revision()
	}
	return Advert{Priority: prio, Interval: n.fsm.Advert, Boot: n.boot, Seq: n.seq, Revision: rev, Node: n.fsm.Node}.Marshal(n.key)
}

// Receive handles one datagram from a peer.
func (n *Node) Receive(b []byte, now time.Time) {
	n.mu.Lock()
	a, err := Parse(b, n.key)
	if err == nil {
		err = n.guard.Accept(a)
	}
	if err != nil {
		n.bad[Reason(err)]++
		n.mu.Unlock()
		return
	}
	if a.Node == n.fsm.Node {
		n.mu.Unlock()
		return // our own advert, looped back
	}
	n.lastSeen[a.Node] = now
	n.peerRev[a.Node] = a.Revision
	before := n.fsm.Role()
	if before == Master && a.Priority != 0 {
		// Only masters advertise: two masters. Priority resolves it at
		// once; the report stays up for one master-down interval so that
		// it can be seen and scraped.
		n.dualUntil = now.Add(n.fsm.MasterDown())
	}
	after := n.fsm.OnAdvert(a, now)
	n.mu.Unlock()
	n.changed(before, after)
}

// Tick advances the clock: a backup may take over, a master sends its
// advert when due.
func (n *Node) Tick(now time.Time) error {
	n.mu.Lock()
	before := n.fsm.Role()
	after := n.fsm.Tick(now)
	var out []byte
	var err error
	if after == Master && !now.Before(n.nextAdvert) {
		out, err = n.advert(n.fsm.Priority)
		n.nextAdvert = now.Add(n.fsm.Advert)
	}
	n.mu.Unlock()
	if out != nil {
		err = n.send.Send(out)
	}
	n.changed(before, after)
	return err
}

// Handoff is a planned step-down: a priority-0 advert tells the peer to
// take over after its skew, and this node becomes backup.
func (n *Node) Handoff(now time.Time) error {
	n.mu.Lock()
	before := n.fsm.Role()
	out, err := n.advert(0)
	n.fsm.StepDown(now)
	n.mu.Unlock()
	if err == nil {
		err = n.send.Send(out)
	}
	n.changed(before, Backup)
	return err
}

func (n *Node) changed(before, after Role) {
	if before != after && n.OnRole != nil {
		n.OnRole(after)
	}
}

// Status is a node's view for `sluice ha status` and metrics.
type Status struct {
	Role Role
	// DualMaster: as master, this node heard another master within the
	// last master-down interval (sluice_ha_dual_master).
	DualMaster  bool
	BadAdverts  map[string]uint64
	AdvertAge   map[string]time.Duration
	PeerRev     map[string]uint64
	MasterDown  time.Duration
	AdvertEvery time.Duration
}

// Status reports the node's view at now.
func (n *Node) Status(now time.Time) Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{Role: n.fsm.Role(), DualMaster: now.Before(n.dualUntil), BadAdverts: map[string]uint64{},
		AdvertAge: map[string]time.Duration{}, PeerRev: map[string]uint64{}, MasterDown: n.fsm.MasterDown(), AdvertEvery: n.fsm.Advert}
	for k, v := range n.bad {
		st.BadAdverts[k] = v
	}
	for k, v := range n.lastSeen {
		st.AdvertAge[k] = now.Sub(v)
	}
	for k, v := range n.peerRev {
		st.PeerRev[k] = v
	}
	return st
}
