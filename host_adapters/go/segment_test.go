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

// ownedName is the reapable name shape of LAYOUT.md 1.3 (layout.py's
// OWNED_NAME_RE).
var ownedName = regexp.MustCompile(`^shmpool-([0-9]+)-([0-9]+)-([0-9a-f]{8,32})$`)

func TestSegmentCreate(t *testing.T) {
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
		if m == nil || !validName(s.name) {
			t.Errorf("name %q has the wrong shape", s.name)
		} else {
			if m[1] != fmt.Sprint(os.Getpid()) {
				t.Errorf("name %q: pid %s, want %d", s.name, m[1], os.Getpid())
			}
			stat, _ := os.ReadFile("/proc/self/stat")
			start, _ := parseStartTime(string(stat))
			if m[2] != fmt.Sprint(start) {
				t.Errorf("name %q: start %s, want %d", s.name, m[2], start)
			}
			if len(m[3]) < 16 {
				t.Errorf("name %q: only %d random hex digits", s.name, len(m[3]))
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
		// What a reader (the server) sees in the file.
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		h := decodeHeader(raw)
		if why := checkHeader(h, tc.kind, fi.Size()); why != "" {
			t.Errorf("header refused: %s", why)
		}
		if h.Capacity != uint64(tc.capacity) || h.Count != uint64(tc.count) || h.Status != 0 || h.Needed != 0 {
			t.Errorf("header %+v", h)
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
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still exists after close: %v", path, err)
		}
	}
}

func TestSegmentNamesDiffer(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		n, err := newSegmentName()
		if err != nil {
			t.Fatal(err)
		}
		if seen[n] {
			t.Fatalf("name %s repeated", n)
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
		t.Errorf("failed creation left segments behind: %v", after)
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

// ownSegments lists this process's segments in /dev/shm.
func ownSegments(t testing.TB) []string {
	t.Helper()
	names, err := listOwnSegments()
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func listOwnSegments() ([]string, error) {
	ents, err := os.ReadDir(shmDir)
	if err != nil {
		return nil, err
	}
	prefix := fmt.Sprintf("shmpool-%d-", os.Getpid())
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
