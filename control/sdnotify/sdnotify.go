// Package sdnotify speaks systemd's notify protocol for the daemon: READY
// and STOPPING, and watchdog pings sent only while a health function says
// the daemon is well.
package sdnotify

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Ready tells systemd (Type=notify) that the daemon is ready and, when
// the unit has WatchdogSec, pings its watchdog every half interval while
// healthy returns nil. It reports whether
// systemd is listening.
func Ready(ctx context.Context, healthy func() error, log *slog.Logger) bool {
	ok, err := daemon.SdNotify(false, daemon.SdNotifyReady)
	if err != nil {
		log.Warn("sd_notify", "err", err)
	}
	if !ok {
		return false
	}
	if every, err := daemon.SdWatchdogEnabled(false); err == nil && every > 0 {
		go Watchdog(ctx, every/2, healthy, func() { daemon.SdNotify(false, daemon.SdNotifyWatchdog) }, log)
	}
	return true
}

// Stopping tells systemd the daemon is stopping and will take up to
// bound: systemd then waits that long before it kills it, even when the
// unit's TimeoutStopSec is shorter (a long --bgp-drain).
func Stopping(bound time.Duration) {
	daemon.SdNotify(false, fmt.Sprintf("%s\nEXTEND_TIMEOUT_USEC=%d", daemon.SdNotifyStopping, bound.Microseconds()))
}

// Watchdog calls ping every period while healthy says the daemon is well,
// and logs (once per spell) why it does not.
func Watchdog(ctx context.Context, period time.Duration, healthy func() error, ping func(), log *slog.Logger) {
	t := time.NewTicker(period)
	defer t.Stop()
	sick := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := healthy(); err != nil {
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
