package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// notifySystemd tells systemd (Type=notify) that the daemon is ready, and,
// when the unit has WatchdogSec, pings its watchdog while the daemon is
// healthy. A hung daemon leaves a pinned data plane forwarding on frozen
// health: it stops pinging, and systemd restarts it.
func (d *Daemon) notifySystemd(ctx context.Context) {
	if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		d.log.Warn("sd_notify", "err", err)
	} else if !ok {
		return // not started by systemd
	}
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	go watchdog(ctx, every/2, d.healthy, func() { daemon.SdNotify(false, daemon.SdNotifyWatchdog) }, d.log)
}

// watchdog calls ping every period while healthy says the daemon is, and
// logs (once per spell) why it does not.
func watchdog(ctx context.Context, period time.Duration, healthy func(time.Duration) error, ping func(), log *slog.Logger) {
	t := time.NewTicker(period)
	defer t.Stop()
	sick := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := healthy(period / 2); err != nil {
			if !sick {
				log.Error("watchdog: not pinging systemd", "reason", err)
			}
			sick = true
			continue
		}
		sick = false
		ping()
	}
}

// healthy checks that the daemon's lock can be taken within wait, and
// that its health checks are running: some probe finished within three
// times the longest check interval (plus its timeout).
func (d *Daemon) healthy(wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for !d.mu.TryLock() {
		if time.Now().After(deadline) {
			return fmt.Errorf("the daemon's lock has been held for over %v", wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.mu.Unlock()
	bound := time.Duration(d.checkBound.Load())
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
