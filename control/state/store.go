package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Store keeps the desired state durably. Today a bbolt file on the LB
// node; an etcd-backed store takes its place for active/active fleets.
type Store interface {
	// Load returns the committed state (revision 0 and no VIPs when empty).
	Load() (State, error)
	// Commit applies change to the committed state in one transaction: the
	// result is normalised, validated and stored with the next revision,
	// or nothing changes. A change that leaves the state equal commits
	// nothing and returns the state as it was.
	Commit(change func(*State) error) (State, error)
	// Replace stores a state committed elsewhere (an LB pair's master)
	// with its revision, in one transaction.
	Replace(next State) (State, error)
	Close() error
}

var (
	bucketName = []byte("sluice")
	stateKey   = []byte("state")
	// sumKey holds the SHA-256 of the value at stateKey: bbolt checks
	// its pages' structure, not their contents.
	sumKey = []byte("state-sha256")
)

// BoltStore is the bbolt Store. Every commit also archives the previous
// state, Seesaw-style, as <dir>/archive/state-<revision>-<unix>.json.
type BoltStore struct {
	db          *bolt.DB
	dir         string
	archiveKeep int
	// Archiving happens after the commit, in order, off the commit's path:
	// a promotion commits twice and must not wait for the archive's fsyncs.
	archiveq chan State
	archived sync.WaitGroup
	tl       timeline
	// writing is held (shared) across a write and its archive hand-off,
	// and exclusively by Close: a write that comes after Close is refused
	// (ErrClosed) instead of sending on the closed archive queue.
	writing sync.RWMutex
	closed  bool
}

// ErrClosed: the store was closed (the daemon is stopping).
var ErrClosed = errors.New("state store closed")

// beginWrite takes the write guard; the caller calls endWrite.
func (s *BoltStore) beginWrite() error {
	s.writing.RLock()
	if s.closed {
		s.writing.RUnlock()
		return ErrClosed
	}
	return nil
}

func (s *BoltStore) endWrite() { s.writing.RUnlock() }

// StateFile is the bbolt file in a state directory.
const StateFile = "state.db"

// ErrCorrupt marks a state file that cannot be read: it is truncated,
// overwritten, or holds a state that does not validate.
var ErrCorrupt = errors.New("state file is corrupt")

// ErrLocked marks a state file another process holds open.
var ErrLocked = errors.New("state file is locked by another process (is another sluice daemon running?)")

// OpenBoltStore opens (creating) <dir>/state.db; dir is made 0700. A
// file that cannot be read is refused with ErrCorrupt, naming it and the
// fault; one another process holds, with ErrLocked.
func OpenBoltStore(dir string, archiveKeep int) (*BoltStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir %s: %w", dir, err)
	}
	path := filepath.Join(dir, StateFile)
	db, err := openChecked(path)
	if err != nil {
		return nil, err
	}
	s := &BoltStore{db: db, dir: dir, archiveKeep: archiveKeep, archiveq: make(chan State, 1024)}
	if err := s.tl.open(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	go func() {
		for prev := range s.archiveq {
			if err := s.archive(prev); err != nil {
				fmt.Fprintf(os.Stderr, "sluice: archive revision %d: %v\n", prev.Revision, err)
			}
			s.archived.Done()
		}
	}()
	return s, nil
}

// openChecked opens the bbolt file and reads every key and value in it,
// decoding the state, on this goroutine with faults turned into panics:
// bbolt panics on some corruptions, and a read through its memory map of
// a damaged page can fault (SIGBUS past the end of a truncated file,
// SIGSEGV through a bad offset). Each becomes an ErrCorrupt. (bbolt's own
// Tx.Check walks on a goroutine of its own, where a fault is fatal.)
func openChecked(path string) (db *bolt.DB, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			if db != nil {
				db.Close()
			}
			db, err = nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, r)
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, fmt.Errorf("%w: %s", ErrLocked, path)
	case err != nil:
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		if tx.Size() > fi.Size() {
			return fmt.Errorf("truncated: %d bytes, its pages need %d", fi.Size(), tx.Size())
		}
		if err := readAll(tx); err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(bucketName)
		if err != nil {
			return err
		}
		_, err = committedState(b)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	return db, nil
}

// readAll touches every key and value of every bucket.
func readAll(tx *bolt.Tx) error {
	return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
		n := 0
		return b.ForEach(func(k, v []byte) error {
			n += len(k) + len(v)
			for _, c := range v { // read every byte, not only the header
				n += int(c)
			}
			return nil
		})
	})
}

// Load implements Store. A stored state that does not decode or
// validate is ErrCorrupt, naming the file and the field.
func (s *BoltStore) Load() (State, error) {
	var st State
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		st, err = committedState(tx.Bucket(bucketName))
		return err
	})
	if err != nil {
		return State{}, fmt.Errorf("%w: %s: %v", ErrCorrupt, s.Path(), err)
	}
	return st, nil
}

// Path is the store's file.
func (s *BoltStore) Path() string { return filepath.Join(s.dir, StateFile) }

// committedState decodes the state stored in b (revision 0 and no VIPs
// when there is none).
func committedState(b *bolt.Bucket) (State, error) {
	var cur State
	raw := b.Get(stateKey)
	if raw == nil {
		return cur, nil
	}
	if sum := b.Get(sumKey); sum != nil { // files from before the sum have none
		if got := sha256.Sum256(raw); !bytes.Equal(sum, got[:]) {
			return State{}, errors.New("committed state: checksum mismatch (the stored bytes changed)")
		}
	}
	if err := json.Unmarshal(raw, &cur); err != nil {
		return State{}, fmt.Errorf("decode committed state: %w", err)
	}
	check := cur.Clone()
	check.Normalize()
	if err := check.Validate(); err != nil {
		return State{}, fmt.Errorf("committed state (revision %d): %w", cur.Revision, err)
	}
	return cur, nil
}

// Commit implements Store.
func (s *BoltStore) Commit(change func(*State) error) (State, error) {
	if err := s.beginWrite(); err != nil {
		return State{}, err
	}
	defer s.endWrite()
	var out, prev State
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		cur, err := committedState(b)
		if err != nil {
			return err
		}
		next := cur.Clone()
		if err := change(&next); err != nil {
			return err
		}
		next.Normalize()
		if err := next.Validate(); err != nil {
			return err
		}
		next.Revision = cur.Revision
		if Equal(cur, next) {
			out = cur
			return nil
		}
		next.Revision = cur.Revision + 1
		raw, err := encode(next)
		if err != nil {
			return err
		}
		if cur.Revision > 0 {
			prev = cur
		}
		out = next
		return putState(b, raw)
	})
	if err != nil {
		return State{}, err
	}
	if prev.Revision > 0 {
		s.archived.Add(1)
		s.archiveq <- prev
	}
	return out, nil
}

// MaxStateSize bounds a state's JSON: what an LB pair's sync accepts
// before it can check the sender. The most VIPs and backends the data
// plane holds take about 2.5 MB.
const MaxStateSize = 4 << 20

// encode is a state's JSON, refused past MaxStateSize.
func encode(s State) ([]byte, error) {
	raw, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	if len(raw) > MaxStateSize {
		return nil, fmt.Errorf("state: %d bytes of JSON, at most %d (long check bodies or payloads?)", len(raw), MaxStateSize)
	}
	return raw, nil
}

// putState stores a state's JSON with its checksum.
func putState(b *bolt.Bucket, raw []byte) error {
	sum := sha256.Sum256(raw)
	if err := b.Put(sumKey, sum[:]); err != nil {
		return err
	}
	return b.Put(stateKey, raw)
}

// Replace stores next, a state committed elsewhere (the master of an LB
// pair), keeping its revision; the previous state is archived. A state
// equal to the stored one writes nothing.
func (s *BoltStore) Replace(next State) (State, error) {
	next = next.Clone()
	next.Normalize()
	if err := next.Validate(); err != nil {
		return State{}, fmt.Errorf("replicated revision %d: %w", next.Revision, err)
	}
	if err := s.beginWrite(); err != nil {
		return State{}, err
	}
	defer s.endWrite()
	var prev State
	changed := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		cur, err := committedState(b)
		if err != nil {
			return err
		}
		if Equal(cur, next) {
			return nil
		}
		raw, err := encode(next)
		if err != nil {
			return err
		}
		prev, changed = cur, true
		return putState(b, raw)
	})
	if err != nil {
		return State{}, err
	}
	if changed && prev.Revision > 0 {
		s.archived.Add(1)
		s.archiveq <- prev
	}
	return next, nil
}

// Equal reports whether two states are the same, revision included.
func Equal(a, b State) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

// Close implements Store; it finishes pending archive writes first.
func (s *BoltStore) Close() error {
	s.writing.Lock()
	if s.closed {
		s.writing.Unlock()
		return nil
	}
	s.closed = true
	s.writing.Unlock()
	s.archived.Wait()
	close(s.archiveq)
	s.tl.close()
	return s.db.Close()
}

// ArchiveDir is where previous states are kept.
func (s *BoltStore) ArchiveDir() string { return archiveDir(s.dir) }

func archiveDir(stateDir string) string { return filepath.Join(stateDir, "archive") }

func (s *BoltStore) archive(prev State) error {
	dir := s.ArchiveDir()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("archive dir: %w", err)
	}
	snap, err := NewSnapshot(prev, time.Now())
	if err != nil {
		return err
	}
	name := fmt.Sprintf("state-%010d-%d.json", prev.Revision, time.Now().Unix())
	if err := snap.WriteFile(filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("archive revision %d: %w", prev.Revision, err)
	}
	return s.prune()
}

func (s *BoltStore) prune() error {
	entries, err := ListArchive(s.dir)
	if err != nil {
		return err
	}
	if s.archiveKeep <= 0 || len(entries) <= s.archiveKeep {
		return nil
	}
	for _, e := range entries[:len(entries)-s.archiveKeep] {
		if err := os.Remove(e.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("prune archive: %w", err)
		}
	}
	return nil
}

// ArchiveEntry is one archived state.
type ArchiveEntry struct {
	Path     string    `json:"path"`
	Revision uint64    `json:"revision"`
	Time     time.Time `json:"time"`
	Size     int64     `json:"size"`
}

// Archive lists archived states, oldest first, once pending writes are done.
func (s *BoltStore) Archive() ([]ArchiveEntry, error) {
	s.archived.Wait()
	return ListArchive(s.dir)
}

// ListArchive lists the states archived in a state directory, oldest
// first; it needs no store open.
func ListArchive(stateDir string) ([]ArchiveEntry, error) {
	dir := archiveDir(stateDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return []ArchiveEntry{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read archive: %w", err)
	}
	out := []ArchiveEntry{}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "state-") || !strings.HasSuffix(name, ".json") {
			continue
		}
		parts := strings.Split(strings.TrimSuffix(strings.TrimPrefix(name, "state-"), ".json"), "-")
		if len(parts) != 2 {
			continue
		}
		rev, err1 := strconv.ParseUint(parts[0], 10, 64)
		ts, err2 := strconv.ParseInt(parts[1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		out = append(out, ArchiveEntry{Path: filepath.Join(dir, name), Revision: rev, Time: time.Unix(ts, 0), Size: info.Size()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Revision < out[j].Revision })
	return out, nil
}
