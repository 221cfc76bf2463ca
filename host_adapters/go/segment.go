package shmpool

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"
)

// shmDir is where POSIX shared-memory objects live on Linux.
const shmDir = "/dev/shm/"

// segment is one mapped segment this process created (LAYOUT.md 1.4). It is
// not safe for concurrent use; its owner serializes access.
type segment struct {
	name     string
	kind     uint16
	capacity int
	mem      []byte // the whole mapping: header and region
}

var (
	ownerOnce   sync.Once
	ownerPrefix string // "shmpool-<pid>-<start>-"
	ownerErr    error
)

// segmentNamePrefix returns "shmpool-<pid>-<start>-" for this process, where
// <start> is field 22 of /proc/self/stat.
func segmentNamePrefix() (string, error) {
	ownerOnce.Do(func() {
		stat, err := os.ReadFile("/proc/self/stat")
		if err != nil {
			ownerErr = fmt.Errorf("shmpool: reading process start time: %w", err)
			return
		}
		start, err := parseStartTime(string(stat))
		if err != nil {
			ownerErr = err
			return
		}
		ownerPrefix = fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), start)
	})
	return ownerPrefix, ownerErr
}

// parseStartTime returns field 22 (starttime) of a /proc/<pid>/stat line.
// Field 2, the command name, is in parentheses and may itself contain
// spaces and parentheses, so fields are counted after the last ')'.
func parseStartTime(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("shmpool: malformed /proc/self/stat: no ')'")
	}
	fields := strings.Fields(stat[i+1:]) // fields[0] is field 3 (state)
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("shmpool: malformed /proc/self/stat: %d fields after the command name", len(fields))
	}
	start, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("shmpool: malformed /proc/self/stat start time %q", fields[idx])
	}
	return start, nil
}

// newSegmentName returns shmpool-<pid>-<start>-<16 random hex digits>.
func newSegmentName() (string, error) {
	prefix, err := segmentNamePrefix()
	if err != nil {
		return "", err
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("shmpool: random segment name: %w", err)
	}
	return prefix + hex.EncodeToString(r[:]), nil
}

// segmentBytes is the file size of a segment of capacity elements.
func segmentBytes(capacity int) (int, error) {
	const maxInt = int(^uint(0) >> 1)
	if capacity < 0 || capacity > (maxInt-headerSize)/itemSize {
		return 0, fmt.Errorf("shmpool: segment capacity %d out of range", capacity)
	}
	return headerSize + itemSize*capacity, nil
}

// createSegment creates, reserves, maps and initializes a segment of the
// given kind holding capacity elements. For a data segment the header's
// count is set to count.
func createSegment(kind uint16, capacity, count int) (*segment, error) {
	size, err := segmentBytes(capacity)
	if err != nil {
		return nil, err
	}
	var (
		name string
		fd   int
	)
	for attempt := 0; ; attempt++ {
		if name, err = newSegmentName(); err != nil {
			return nil, err
		}
		fd, err = openRetry(shmDir+name,
			syscall.O_RDWR|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
		if err == nil {
			break
		}
		if errors.Is(err, syscall.EEXIST) && attempt < 8 {
			continue
		}
		return nil, fmt.Errorf("shmpool: creating segment %s%s: %w", shmDir, name, err)
	}
	fail := func(err error) (*segment, error) {
		syscall.Close(fd)
		syscall.Unlink(shmDir + name)
		return nil, err
	}
	if err := reserve(fd, int64(size)); err != nil {
		return fail(fmt.Errorf("shmpool: reserving %d bytes in %s for segment %s: %w", size, shmDir, name, err))
	}
	mem, err := syscall.Mmap(fd, 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("shmpool: mapping segment %s (%d bytes): %w", name, size, err))
	}
	syscall.Close(fd) // the mapping keeps the memory
	h := newHeader(kind, uint64(capacity), 0)
	if kind == kindData {
		h.Count = uint64(count)
	}
	encodeHeader(mem, h)
	return &segment{name: name, kind: kind, capacity: capacity, mem: mem}, nil
}

func openRetry(path string, flags int, mode uint32) (int, error) {
	for {
		fd, err := syscall.Open(path, flags, mode)
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

// reserve allocates size bytes for fd the way posix_fallocate does, so that
// a full /dev/shm is reported now rather than as SIGBUS on first touch.
func reserve(fd int, size int64) error {
	for {
		err := syscall.Fallocate(fd, 0, 0, size)
		switch err {
		case nil:
			return nil
		case syscall.EINTR:
			continue
		case syscall.EOPNOTSUPP:
			// Not tmpfs; glibc's posix_fallocate would write the blocks.
			// Setting the size is the best pure-Go approximation.
			return syscall.Ftruncate(fd, size)
		}
		return err
	}
}

// floats returns the data region as float64 values.
func (s *segment) floats() []float64 {
	if s.capacity == 0 {
		return []float64{}
	}
	return unsafe.Slice((*float64)(unsafe.Pointer(&s.mem[headerSize])), s.capacity)
}

// ints returns the result region as int64 indices.
func (s *segment) ints() []int64 {
	if s.capacity == 0 {
		return []int64{}
	}
	return unsafe.Slice((*int64)(unsafe.Pointer(&s.mem[headerSize])), s.capacity)
}

func (s *segment) setCount(n int) {
	binary.LittleEndian.PutUint64(s.mem[offCount:], uint64(n))
}

// header decodes the segment's current header.
func (s *segment) header() segmentHeader { return decodeHeader(s.mem) }

// close unmaps and unlinks the segment. Unlinking a name that is already gone
// is not an error.
func (s *segment) close() error {
	err := syscall.Munmap(s.mem)
	s.mem = nil
	if uerr := syscall.Unlink(shmDir + s.name); uerr != nil && uerr != syscall.ENOENT && err == nil {
		err = uerr
	}
	if err != nil {
		return fmt.Errorf("shmpool: closing segment %s: %w", s.name, err)
	}
	return nil
}

// unlink removes the segment's name, leaving the mapping in place.
func (s *segment) unlink() error {
	if err := syscall.Unlink(shmDir + s.name); err != nil && err != syscall.ENOENT {
		return fmt.Errorf("shmpool: unlinking segment %s: %w", s.name, err)
	}
	return nil
}

// unmap releases the mapping, leaving the name in place.
func (s *segment) unmap() error {
	err := syscall.Munmap(s.mem)
	s.mem = nil
	if err != nil {
		return fmt.Errorf("shmpool: unmapping segment %s: %w", s.name, err)
	}
	return nil
}
