package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// BootFile holds the node's boot counter in its state directory.
const BootFile = "boot"

// NextBoot raises the boot counter kept in dir and returns the new value:
// every start of a node gets a larger one, whatever its clock says, so a
// peer's replay guard accepts it at once. The first start takes now in
// nanoseconds, so a node upgraded from clock-based boot IDs still counts
// up; later starts ignore the clock.
func NextBoot(dir string, now time.Time) (uint64, error) {
	path := filepath.Join(dir, BootFile)
	var next uint64
	raw, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		next = uint64(now.UnixNano())
	case err != nil:
		return 0, fmt.Errorf("boot counter %s: %w", path, err)
	default:
		cur, perr := strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
		if perr != nil || cur == ^uint64(0) {
			return 0, fmt.Errorf("boot counter %s: %q is not a counter (remove the file to start a new one)", path, raw)
		}
		next = cur + 1
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, fmt.Errorf("boot counter: %w", err)
	}
	if err := WriteFileAtomic(path, []byte(strconv.FormatUint(next, 10)+"\n"), 0o600); err != nil {
		return 0, fmt.Errorf("boot counter: %w", err)
	}
	return next, nil
}
