//go:build !race

package shmpool

const raceEnabled = false
