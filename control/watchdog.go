package control

import (
	"fmt"
	"time"
)

// decisionBound is how long the route announcer may go without running
// its rules (it runs them at least every 200 ms) before the daemon counts
// as hung.
const decisionBound = 2 * time.Second

// healthy checks what a hung daemon stops: its health checks (some probe
// finished within three times the longest check interval, plus its
// timeout) and, behind ECMP, the route announcer's decisions. It waits
// for no lock: a change held up by etcd or the disk holds none that
// these need.
func (d *Daemon) healthy() error {
	now := time.Now()
	if bound := time.Duration(d.checks.bound.Load()); bound > 0 {
		last := time.Unix(0, d.lastProbe.Load())
		if d.lastProbe.Load() == 0 {
			last = d.started
		}
		if since := now.Sub(last); since > bound {
			return fmt.Errorf("no health probe finished in %v", since.Round(time.Millisecond))
		}
	}
	if last := d.routes.LastDecision(); !last.IsZero() {
		if since := now.Sub(last); since > decisionBound {
			return fmt.Errorf("the route announcer has not run its rules in %v", since.Round(time.Millisecond))
		}
	}
	return nil
}
