package ha

import (
	"sort"
	"sync"
	"time"
)

// Transport sends an advert to every peer.
type Transport interface {
	Send(b []byte) error
}

// Node drives one FSM: it signs and sends adverts (as master and as
// backup), checks and counts every received advert, and reports role
// changes. The clock is passed in, so the node runs in tests as it runs
// for real.
type Node struct {
	fsm      *FSM
	key      []byte
	boot     uint64
	send     Transport
	revision func() uint64
	// OnRole is called (outside the node's lock) after each role change,
	// with the reason.
	OnRole func(role Role, reason string)
	// OnOutranked is called (outside the lock) when this node, as master,
	// hears a master it outranks: a healed partition. The caller announces
	// its addresses again, since clients may have followed the other one.
	OnOutranked func()
	// MayPreempt reports whether state and flow sync are complete; until
	// then a node with Preempt on does not take over from a lower master.
	MayPreempt func() bool
	// Self is this node's address as its peers see it (as PeerKey
	// writes it); it breaks the tie between two nodes of one name.
	Self string

	// sending is held from an advert's sequence number until it is on
	// the wire, so that adverts leave in sequence order: a later one sent
	// first would make the receiver refuse the earlier as a replay (a
	// priority-0 handoff lost that way leaves the pair without a master
	// for a master-down interval). A channel, not a mutex, so that tests
	// can see a sender wait (testing/synctest).
	sending chan struct{}

	mu          sync.Mutex
	seq         uint64
	guard       ReplayGuard
	nextAdvert  time.Time
	bad         map[string]uint64
	peers       map[string]*PeerStatus
	transitions map[Role]uint64
	// Until this time, report that two masters were seen: set when this
	// node, as master, hears another master (a healed partition).
	dualUntil time.Time
}

// PeerStatus is what a node knows of a peer from its adverts.
type PeerStatus struct {
	Addr     string        `json:"addr"`
	Node     string        `json:"node"`
	Role     Role          `json:"role"`
	Priority uint8         `json:"priority"`
	Revision uint64        `json:"revision"`
	Age      time.Duration `json:"advert_age_ns"`
	Up       bool          `json:"up"`
	lastSeen time.Time
}

// NewNode starts a node as backup. boot must grow across restarts (the
// start time in unix nanoseconds does).
func NewNode(fsm *FSM, key []byte, boot uint64, send Transport, revision func() uint64) *Node {
	return &Node{fsm: fsm, key: key, boot: boot, send: send, revision: revision, sending: make(chan struct{}, 1),
		bad: map[string]uint64{}, peers: map[string]*PeerStatus{}, transitions: map[Role]uint64{}}
}

// AddPeer makes a configured peer known before its first advert, so that
// it is reported down until heard.
func (n *Node) AddPeer(addr string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.peers[addr] == nil {
		n.peers[addr] = &PeerStatus{Addr: addr}
	}
}

func (n *Node) advert(prio uint8, master bool) ([]byte, error) {
	n.seq++
	rev := uint64(0)
	if n.revision != nil {
		rev = n.revision()
	}
	return Advert{Priority: prio, Interval: n.fsm.Advert, Boot: n.boot, Seq: n.seq, Revision: rev, Node: n.fsm.Node, Master: master}.Marshal(n.key)
}

// Refuse counts a datagram refused before parsing (ErrUnknownPeer).
func (n *Node) Refuse(err error) {
	n.mu.Lock()
	n.bad[Reason(err)]++
	n.mu.Unlock()
}

// Receive handles one datagram from the peer at address from. Its MAC is
// computed before the node's lock is taken.
func (n *Node) Receive(b []byte, from string, now time.Time) {
	a, err := Parse(b, n.key)
	n.mu.Lock()
	if err == nil && a.Node == n.fsm.Node {
		if from == n.Self {
			n.mu.Unlock()
			return // our own advert, looped back
		}
		// Another node uses our name: count it, and let the addresses
		// break the tie, so that one of the two, not both, is master.
		n.bad[Reason(ErrOwnName)]++
		if from > n.Self {
			a.Node += "\x00" // sorts just above ours: it outranks us
		} else {
			a.Node = "" // sorts below ours
		}
	}
	if err == nil {
		err = n.guard.Accept(a)
	}
	if err != nil {
		n.bad[Reason(err)]++
		n.mu.Unlock()
		return
	}
	p := n.peers[from]
	if p == nil {
		p = &PeerStatus{Addr: from}
		n.peers[from] = p
	}
	p.Node, p.Priority, p.Revision, p.lastSeen = a.Node, a.Priority, a.Revision, now
	p.Role = Backup
	if a.Master {
		p.Role = Master
	}
	before := n.fsm.Role()
	after := before
	outranked := false
	if a.Master || a.Priority == 0 {
		if before == Master && a.Master && a.Priority != 0 {
			// Two masters. Priority resolves it at once; the report stays
			// up for one master-down interval so that it can be scraped.
			n.dualUntil = now.Add(n.fsm.MasterDown())
		}
		may := n.MayPreempt == nil || n.MayPreempt()
		after = n.fsm.OnAdvert(a, now, may)
		outranked = before == Master && after == Master && a.Master && a.Priority != 0
	}
	n.noteLocked(before, after)
	n.mu.Unlock()
	n.changed(before, after)
	if outranked && n.OnOutranked != nil {
		n.OnOutranked()
	}
}

func (n *Node) noteLocked(before, after Role) {
	if before != after {
		n.transitions[after]++
	}
}

// Tick advances the clock: a backup may take over, and the advert is sent
// when due. A node that has just become master advertises at once (as
// VRRP does), so that the old master hears it well within its own
// master-down interval.
func (n *Node) Tick(now time.Time) error {
	n.sending <- struct{}{}
	n.mu.Lock()
	before := n.fsm.Role()
	after := n.fsm.Tick(now)
	n.noteLocked(before, after)
	var out []byte
	var err error
	due := !now.Before(n.nextAdvert) || (before != Master && after == Master)
	if !n.fsm.Fault() && due {
		out, err = n.advert(n.fsm.Priority, after == Master)
		n.nextAdvert = now.Add(n.fsm.Advert)
	}
	n.mu.Unlock()
	if out != nil {
		err = n.send.Send(out)
	}
	<-n.sending
	n.changed(before, after)
	return err
}

// Handoff is a planned step-down: a priority-0 advert tells the peer to
// take over at once, and this node becomes backup.
func (n *Node) Handoff(now time.Time) error {
	n.sending <- struct{}{}
	n.mu.Lock()
	before := n.fsm.Role()
	out, err := n.advert(0, false)
	n.fsm.StepDown(now)
	n.noteLocked(before, Backup)
	n.mu.Unlock()
	if err == nil {
		err = n.send.Send(out)
	}
	<-n.sending
	n.changed(before, Backup)
	return err
}

// SetFault reports the node's interface down (true) or up again.
func (n *Node) SetFault(fault bool, now time.Time) {
	n.mu.Lock()
	before := n.fsm.Role()
	n.fsm.SetFault(fault, now)
	after := n.fsm.Role()
	n.noteLocked(before, after)
	n.mu.Unlock()
	n.changed(before, after)
}

// Role is the node's current role.
func (n *Node) Role() Role {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fsm.Role()
}

func (n *Node) changed(before, after Role) {
	if before != after && n.OnRole != nil {
		n.mu.Lock()
		why := n.fsm.Reason()
		n.mu.Unlock()
		n.OnRole(after, why)
	}
}

// Status is a node's view for `sluice ha status` and metrics.
type Status struct {
	Role  Role `json:"role"`
	Fault bool `json:"fault"`
	// DualMaster: as master, this node heard another master within the
	// last master-down interval (sluice_ha_dual_master).
	DualMaster  bool              `json:"dual_master"`
	BadAdverts  map[string]uint64 `json:"bad_adverts"`
	Transitions map[Role]uint64   `json:"transitions"`
	Peers       []PeerStatus      `json:"peers"`
	Priority    uint8             `json:"priority"`
	Node        string            `json:"node"`
	MasterDown  time.Duration     `json:"master_down_ns"`
	AdvertEvery time.Duration     `json:"advert_ns"`
}

// Status reports the node's view at now. A peer is up if heard within
// one master-down interval.
func (n *Node) Status(now time.Time) Status {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{Role: n.fsm.Role(), Fault: n.fsm.Fault(), DualMaster: now.Before(n.dualUntil), BadAdverts: map[string]uint64{},
		Transitions: map[Role]uint64{}, Priority: n.fsm.Priority, Node: n.fsm.Node, MasterDown: n.fsm.MasterDown(), AdvertEvery: n.fsm.Advert}
	for k, v := range n.bad {
		st.BadAdverts[k] = v
	}
	for k, v := range n.transitions {
		st.Transitions[k] = v
	}
	for _, p := range n.peers {
		c := *p
		if !p.lastSeen.IsZero() {
			c.Age = now.Sub(p.lastSeen)
			c.Up = c.Age <= n.fsm.MasterDown()
		}
		st.Peers = append(st.Peers, c)
	}
	sort.Slice(st.Peers, func(i, j int) bool { return st.Peers[i].Addr < st.Peers[j].Addr })
	return st
}

// Master returns the peer that advertises as master, if one is up.
func (n *Node) Master(now time.Time) (PeerStatus, bool) {
	st := n.Status(now)
	for _, p := range st.Peers {
		if p.Role == Master && p.Up {
			return p, true
		}
	}
	return PeerStatus{}, false
}
