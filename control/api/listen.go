package api

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Listen opens the daemon's side of the API: the unix socket at path,
// refused while another daemon answers there. The socket never exists
// with looser permissions than 0600: it is bound in a fresh directory of
// mode 0700 next to path, made 0600 there, then renamed into place (the
// process umask is not touched: it is the whole process's). The daemon
// removes path on shutdown.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, errors.New("another sluice daemon is listening there")
	}
	os.Remove(path)
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".s")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bound := filepath.Join(tmp, "s")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: bound, Net: "unix"})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(bound, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(bound, path); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
