package ha

import "time"

// Role of a node in the pair.
type Role string

// Roles.
const (
	Backup Role = "backup"
	Master Role = "master"
)

// FSM is the VRRPv3-style state machine of one node, driven by adverts and
// a clock the caller passes in. A backup becomes master when no advert of a
// master arrived for MasterDown (3 × advert + skew); a higher priority
// wins, and equal priorities are broken by the larger node name.
type FSM struct {
	Node     string
	Priority uint8 // 1..255
	Advert   time.Duration
	Preempt  bool

	role         Role
	masterDownAt time.Time
}

// NewFSM starts as a backup, waiting MasterDown for a master.
func NewFSM(node string, priority uint8, advert time.Duration, preempt bool, now time.Time) *FSM {
	f := &FSM{Node: node, Priority: priority, Advert: advert, Preempt: preempt, role: Backup}
	f.masterDownAt = now.Add(f.MasterDown())
	return f
}

// Skew is (256 − priority) × advert / 256: higher priorities take over
// sooner.
func (f *FSM) Skew() time.Duration { return time.Duration(256-int(f.Priority)) * f.Advert / 256 }

// MasterDown is 3 × advert + skew.
func (f *FSM) MasterDown() time.Duration { return 3*f.Advert + f.Skew() }

// Role is the current role.
func (f *FSM) Role() Role { return f.role }

// beats reports whether an advert's sender outranks this node.
func (f *FSM) beats(a Advert) bool {
	if a.Priority != f.Priority {
		return a.Priority > f.Priority
	}
	return a.Node > f.Node
}

// OnAdvert handles an authenticated, fresh advert from the peer and returns
// the role afterwards.
func (f *FSM) OnAdvert(a Advert, now time.Time) Role {
	switch f.role {
	case Master:
		// Dual master (a healed partition) or a pre-empting peer: the
		// outranked node steps down at once.
		if a.Priority != 0 && f.beats(a) {
			f.role = Backup
			f.masterDownAt = now.Add(f.MasterDown())
		}
	case Backup:
		switch {
		case a.Priority == 0:
			// The master is stepping down: take over after the skew only.
			f.masterDownAt = now.Add(f.Skew())
		case f.Preempt && !f.beats(a):
			// We outrank the master and may pre-empt (the caller holds
			// pre-emption until state and flow sync are complete).
			f.masterDownAt = now
		default:
			f.masterDownAt = now.Add(f.MasterDown())
		}
	}
	return f.role
}

// Tick advances the clock: a backup whose master-down timer ran out
// becomes master. It returns the role afterwards.
func (f *FSM) Tick(now time.Time) Role {
	if f.role == Backup && !now.Before(f.masterDownAt) {
		f.role = Master
	}
	return f.role
}

// StepDown is a planned handoff: the master goes to backup (and should send
// a priority-0 advert so that the peer takes over after its skew).
func (f *FSM) StepDown(now time.Time) {
	f.role = Backup
	f.masterDownAt = now.Add(f.MasterDown())
}
