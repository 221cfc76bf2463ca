package shmpool

import (
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

// ownedName is the reapable name shape of LAYOUT.md 1.3 and 1.4
// (layout.py OWNED_NAME_RE).
var ownedName = regexp.MustCompile(`^shmpool-([0-9]{1,10})-([0-9a-f]{8})-([0-9a-f]{16}|owner)$`)

// ownerAlive does what a reaper does (LAYOUT.md 1.4) and reports whether
// the owner of id holds its lock.
func ownerAlive(t *testing.T, id string) bool {
	t.Helper()
	fd, err := syscall.Open(ownerLockPath(id), syscall.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening the owner file: %v", err)
	}
	defer syscall.Close(fd)
	err = syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB)
	if err == nil {
		syscall.Flock(fd, syscall.LOCK_UN)
		return false
	}
	if err != syscall.EWOULDBLOCK {
		t.Fatalf("flock: %v", err)
	}
	return true
}

func TestSegmentCreate(t *testing.T) {
	before := ownSegments(t)
	for _, tc := range []struct {
		kind            uint16
		capacity, count int
	}{{kindData, 1000, 1000}, {kindData, 0, 0}, {kindResult, 16, 0}, {kindData, 1 << 20, 5}} {
		s, err := createSegment(tc.kind, tc.capacity, tc.count)
		if err != nil {
			t.Fatal(err)
		}
		path := shmDir + s.name
		m := ownedName.FindStringSubmatch(s.name)
		if m == nil || !validName(s.name) || m[3] == "owner" {
			t.Errorf("name %q has the wrong shape", s.name)
		} else {
			if m[1] != fmt.Sprint(os.Getpid()) {
				t.Errorf("name %q: pid %s, want %d", s.name, m[1], os.Getpid())
			}
			if id := m[1] + "-" + m[2]; id != s.owner {
				t.Errorf("name %q, owner %q", s.name, s.owner)
			} else if !ownerAlive(t, id) {
				t.Errorf("owner %s does not hold its lock", id)
			}
		}
		fi, err := os.Lstat(path)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, want regular 0600", path, fi.Mode())
		}
		if st := fi.Sys().(*syscall.Stat_t); int(st.Uid) != os.Getuid() {
			t.Errorf("%s: owner %d", path, st.Uid)
		} else if st.Blocks*512 < int64(headerSize+8*tc.capacity) {
			t.Errorf("%s: %d bytes allocated, want %d reserved", path, st.Blocks*512, headerSize+8*tc.capacity)
		}
		if fi.Size() != int64(headerSize+8*tc.capacity) {
			t.Errorf("%s: size %d", path, fi.Size())
		}
		// What a reader (a worker) sees in the file.
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h := decodeHeader(raw)
		if why := checkHeader(h, tc.kind, fi.Size()); why != "" {
			t.Errorf("header refused: %s", why)
		}
		if h.Version != 2 || h.Capacity != uint64(tc.capacity) || h.Count != uint64(tc.count) || h.Status != 0 || h.Needed != 0 {
			t.Errorf("header %+v", h)
		}
		for i, c := range raw[36:40] {
			if c != 0 {
				t.Errorf("reserved byte %d = %#x", 36+i, c)
			}
		}
		for i, c := range raw[48:64] {
			if c != 0 {
				t.Errorf("reserved byte %d = %#x", 48+i, c)
			}
		}
		if tc.kind == kindData && tc.capacity > 0 {
			f := s.floats()
			if len(f) != tc.capacity {
				t.Errorf("floats() has %d values", len(f))
			}
			f[0], f[len(f)-1] = 1.5, math.Inf(-1)
			raw, _ = os.ReadFile(path)
			if string(raw[64:72]) != "\x00\x00\x00\x00\x00\x00\xf8\x3f" {
				t.Errorf("region[0] bytes %x, want 1.5 little-endian", raw[64:72])
			}
		}
		if err := s.close(); err != nil {
			t.Fatal(err)
		}
		if err := s.close(); err != nil {
			t.Errorf("second close: %v", err)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after close: %v", path, err)
		}
	}
	if after := ownSegments(t); len(after) != len(before) {
		t.Errorf("before %v, after %v", before, after)
	}
}

// The owner file exists while any segment of the process has its name,
// is locked, and goes after the last one; a later segment takes a new
// owner.
func TestOwnerLifecycle(t *testing.T) {
	if len(ownSegments(t)) > 0 {
		t.Skip("segments of this process are open")
	}
	a, err := createSegment(kindData, 10, 10)
	if err != nil {
		t.Fatal(err)
	}
	b, err := createSegment(kindResult, 10, 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.owner != b.owner {
		t.Errorf("two owners in one process: %s %s", a.owner, b.owner)
	}
	id := a.owner
	fi, err := os.Lstat(ownerLockPath(id))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 || fi.Size() != 0 {
		t.Fatalf("owner file: %v %v", fi, err)
	}
	if !ownerAlive(t, id) {
		t.Error("the owner's lock is not held")
	}
	// Unlinked but still mapped (a Buffer closed during a call): its name
	// is gone, so it no longer needs the owner.
	if err := a.unlink(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(ownerLockPath(id)); err != nil {
		t.Errorf("owner file gone while %s remains: %v", b.name, err)
	}
	b.close()
	a.unmap()
	if _, err := os.Lstat(ownerLockPath(id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("owner file after the last segment: %v", err)
	}
	c, err := createSegment(kindData, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if c.owner == id {
		t.Errorf("owner %s taken again after it was let go", id)
	}
	if left := ownSegments(t); len(left) != 2 {
		t.Errorf("files of this process: %v; want the segment and its owner file", left)
	}
}

func TestSegmentNamesDiffer(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		n, err := newSegmentName("1-00000000")
		if err != nil {
			t.Fatal(err)
		}
		if seen[n] || !ownedName.MatchString(n) {
			t.Fatalf("name %s repeated or misshapen", n)
		}
		seen[n] = true
	}
}

func TestSegmentNoSpace(t *testing.T) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(shmDir, &st); err != nil {
		t.Skip(err)
	}
	total := int64(st.Blocks) * st.Bsize
	capacity := int(2*total/8) + 1000 // twice the size of /dev/shm
	before := ownSegments(t)
	_, err := createSegment(kindData, capacity, 0)
	if err == nil {
		t.Fatalf("a %d-byte segment in a %d-byte /dev/shm was created", 64+8*capacity, total)
	}
	want := fmt.Sprintf("reserving %d bytes", 64+8*capacity)
	if !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), "shmpool: ") {
		t.Errorf("error %q does not say %q", err, want)
	}
	if after := ownSegments(t); len(after) != len(before) {
		t.Errorf("failed creation left files behind: %v", after)
	}
}

func TestSegmentCapacityRange(t *testing.T) {
	if _, err := createSegment(kindData, -1, 0); err == nil {
		t.Error("negative capacity accepted")
	}
	if _, err := createSegment(kindData, math.MaxInt/4, 0); err == nil {
		t.Error("overflowing capacity accepted")
	}
}
