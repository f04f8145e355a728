package control

import (
	"errors"
	"fmt"
	"time"
)

// healthy checks that the daemon's lock can be taken within wait, and
// that its health checks are running: some probe finished within three
// times the longest check interval (plus its timeout).
func (d *Daemon) healthy(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for !d.core.mu.TryLock() {
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon's lock has been held for over %v", wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.core.mu.Unlock()
	bound := time.Duration(d.checks.bound.Load())
	if bound == 0 {
		return nil // no health check configured
	}
	last := time.Unix(0, d.lastProbe.Load())
	if d.lastProbe.Load() == 0 {
		last = d.started
	}
	if since := time.Since(last); since > bound {
		return errors.New("no health probe finished in " + since.Round(time.Millisecond).String())
	}
	return nil
}
