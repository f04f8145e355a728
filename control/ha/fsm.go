package ha

import "time"

// Role of a node in the pair.
type Role string

// Roles.
const (
	Backup Role = "backup"
	Master Role = "master"
)

// FSM is the VRRPv3-style state machine of one node, driven by the
// masters' adverts and a clock the caller passes in. A backup becomes
// master when no advert of a master arrived for MasterDown (3 × advert +
// skew); a higher priority wins, and equal priorities are broken by the
// larger node name. A node whose interface is down (fault) is a backup and
// does not take over.
type FSM struct {
	Node     string
	Priority uint8 // 1..255
	Advert   time.Duration
	Preempt  bool

	role         Role
	fault        bool
	masterDownAt time.Time
	why          string // what armed masterDownAt; the reason of a takeover
	reason       string // why the last role change happened
}

// NewFSM starts as a backup, waiting MasterDown for a master.
func NewFSM(node string, priority uint8, advert time.Duration, preempt bool, now time.Time) *FSM {
	f := &FSM{Node: node, Priority: priority, Advert: advert, Preempt: preempt, role: Backup}
	f.masterDownAt, f.why = now.Add(f.MasterDown()), "no master advert since start"
	return f
}

// Skew is (256 − priority) × advert / 256: higher priorities take over
// sooner.
func (f *FSM) Skew() time.Duration { return time.Duration(256-int(f.Priority)) * f.Advert / 256 }

// MasterDown is 3 × advert + skew.
func (f *FSM) MasterDown() time.Duration { return 3*f.Advert + f.Skew() }

// Role is the current role.
func (f *FSM) Role() Role { return f.role }

// Outranks reports whether a node of priority p and name n outranks this one.
func (f *FSM) Outranks(p uint8, n string) bool {
	if p != f.Priority {
		return p > f.Priority
	}
	return n > f.Node
}

// OnAdvert handles an authenticated, fresh advert from a master (or a
// priority-0 step-down) and returns the role afterwards. mayPreempt says
// whether this node's state and flow sync are complete, so that it may
// pre-empt a lower-priority master when Preempt is on.
func (f *FSM) OnAdvert(a Advert, now time.Time, mayPreempt bool) Role {
	switch f.role {
	case Master:
		// Dual master (a healed partition) or a pre-empting peer: the
		// outranked node steps down at once.
		if a.Priority != 0 && f.Outranks(a.Priority, a.Node) {
			f.role, f.reason = Backup, "outranked by master "+a.Node
			f.masterDownAt, f.why = now.Add(f.MasterDown()), "no master advert since stepping down"
		}
	case Backup:
		switch {
		case a.Priority == 0:
			// The master is stepping down (planned handoff): take over now.
			f.masterDownAt, f.why = now, a.Node+" stepped down (priority 0)"
		case f.Preempt && mayPreempt && !f.Outranks(a.Priority, a.Node):
			f.masterDownAt, f.why = now, "pre-empted lower-priority master "+a.Node+" (sync complete)"
		default:
			f.masterDownAt, f.why = now.Add(f.MasterDown()), "no advert from master "+a.Node+" for the master-down interval"
		}
	}
	return f.role
}

// Tick advances the clock: a backup whose master-down timer ran out
// becomes master, unless in fault. It returns the role afterwards.
func (f *FSM) Tick(now time.Time) Role {
	if f.role == Backup && !f.fault && !now.Before(f.masterDownAt) {
		f.role, f.reason = Master, f.why
	}
	return f.role
}

// StepDown makes the node a backup (a planned handoff sends a priority-0
// advert first, so that the peer takes over at once).
func (f *FSM) StepDown(now time.Time) {
	f.role, f.reason = Backup, "stepped down (planned handoff)"
	f.masterDownAt, f.why = now.Add(f.MasterDown()), "no master advert since stepping down"
}

// SetFault marks the node's interface down (a backup that cannot take
// over) or up again; coming back it waits a full master-down interval.
func (f *FSM) SetFault(fault bool, now time.Time) {
	if fault == f.fault {
		return
	}
	f.fault = fault
	if fault {
		f.role, f.reason = Backup, "interface down (fault)"
	}
	f.masterDownAt, f.why = now.Add(f.MasterDown()), "no master advert since the interface came back"
}

// Reason says why the last role change happened.
func (f *FSM) Reason() string { return f.reason }

// Fault reports whether the node is in fault.
func (f *FSM) Fault() bool { return f.fault }
