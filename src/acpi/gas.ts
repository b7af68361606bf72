/**
 * The Generic Address Structure (ACPI 6.5 5.2.3.2, Table 5.1), 12 bytes:
 *   0 Address Space ID u8   1 Register Bit Width u8   2 Register Bit Offset u8
 *   3 Access Size u8 (0 undefined, 1 byte, 2 word, 3 dword, 4 qword)   4 Address u64
 */

import type { ByteWriter, U64 } from "./bytes.ts";

export const GAS_SIZE = 12;

export const ADDRESS_SPACE = {
  systemMemory: 0,
  systemIo: 1,
} as const;

export const ACCESS_SIZE = {
  undefined: 0,
  byte: 1,
  word: 2,
  dword: 3,
  qword: 4,
} as const;

export interface GenericAddress {
  readonly space: (typeof ADDRESS_SPACE)[keyof typeof ADDRESS_SPACE];
  readonly bitWidth: number;
  readonly bitOffset: number;
  readonly accessSize: (typeof ACCESS_SIZE)[keyof typeof ACCESS_SIZE];
  readonly address: U64;
}

/** A byte-wide I/O port register (what a VMM's reset or sleep register usually is). */
export function ioPortByte(port: number): GenericAddress {
  return {
    space: ADDRESS_SPACE.systemIo,
    bitWidth: 8,
    bitOffset: 0,
    accessSize: ACCESS_SIZE.byte,
    address: port,
  };
}

/** The all-zero GAS that means "not present". */
export const GAS_ABSENT: GenericAddress = {
  space: ADDRESS_SPACE.systemMemory,
  bitWidth: 0,
  bitOffset: 0,
  accessSize: ACCESS_SIZE.undefined,
  address: 0,
};

export function writeGas(w: ByteWriter, gas: GenericAddress): void {
  w.u8(gas.space).u8(gas.bitWidth, "GAS bit width").u8(gas.bitOffset, "GAS bit offset").u8(gas.accessSize);
  w.u64(gas.address, "GAS address");
}
