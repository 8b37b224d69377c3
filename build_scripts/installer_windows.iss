; Inno Setup 6 script for Perturb Studio on Windows.
;
; build_scripts/build.py runs this after PyInstaller when ISCC.exe is found:
;     ISCC.exe /DAppVersion=0.1.0 /DSourceDir=dist\PerturbStudio /DOutputDir=dist build_scripts\installer_windows.iss
; and writes dist\PerturbStudio-<version>-setup.exe.
;
; What it installs (per user by default, so no administrator is needed; an administrator can
; choose "install for all users" in the first dialog):
;   {app}\PerturbStudio.exe     the desktop application (no console window)
;   {app}\perturb-studio.exe    the command-line tool (same program, console), optionally on PATH
;   {app}\_internal\            Python, PyTorch (CPU), Qt and the shipped models
;   Start-menu entry, optional desktop shortcut, uninstaller.

#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef SourceDir
  #define SourceDir "..\dist\PerturbStudio"
#endif
#ifndef OutputDir
  #define OutputDir "..\dist"
#endif

#define AppName "Perturb Studio"
#define AppExe "PerturbStudio.exe"
#define CliExe "perturb-studio.exe"

[Setup]
; A fixed AppId keeps upgrades and the uninstaller working across versions: never change it.
AppId={{6F0B6C5E-3C1D-4C7E-9E55-6A2B1B4D7F31}
AppName={#AppName}
AppVersion={#AppVersion}
AppVerName={#AppName} {#AppVersion}
AppPublisher=Perturb Studio developers
AppPublisherURL=https://github.com/perturb-studio/perturb-studio
DefaultDirName={autopf}\{#AppName}
DefaultGroupName={#AppName}
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#OutputDir}
OutputBaseFilename=PerturbStudio-{#AppVersion}-setup
; torch is large: lzma2 solid compression roughly halves the download, at a few minutes of build.
Compression=lzma2/max
SolidCompression=yes
LZMANumBlockThreads=4
WizardStyle=modern
UninstallDisplayIcon={app}\{#AppExe}
ChangesEnvironment=yes
#if FileExists(AddBackslash(SourceDir) + "_internal\resources\icons\perturb-studio.ico")
SetupIconFile={#SourceDir}\_internal\resources\icons\perturb-studio.ico
#endif

[Languages]
Name: "english"; MessagesFile: "compiler:Default.isl"

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"
Name: "addtopath"; Description: "Add the perturb-studio command to PATH"; GroupDescription: "Command line:"

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[InstallDelete]
; An upgrade must not keep libraries of the previous version next to the new ones.
Type: filesandordirs; Name: "{app}\_internal"

[Icons]
Name: "{autoprograms}\{#AppName}"; Filename: "{app}\{#AppExe}"
Name: "{autodesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; Tasks: desktopicon

[Registry]
; Per-user PATH (HKCU) or machine PATH (HKLM), depending on the install mode.
Root: HKA; Subkey: "{code:EnvKey}"; ValueType: expandsz; ValueName: "Path"; \
    ValueData: "{olddata};{app}"; Tasks: addtopath; Check: NeedsAddPath(ExpandConstant('{app}'))

[Run]
Filename: "{app}\{#AppExe}"; Description: "{cm:LaunchProgram,{#AppName}}"; \
    Flags: nowait postinstall skipifsilent

[UninstallDelete]
Type: filesandordirs; Name: "{app}\_internal"

[Code]
function EnvKey(Param: String): String;
begin
  if IsAdminInstallMode then
    Result := 'SYSTEM\CurrentControlSet\Control\Session Manager\Environment'
  else
    Result := 'Environment';
end;

function NeedsAddPath(Dir: String): Boolean;
var
  Paths: String;
  RootKey: Integer;
begin
  if IsAdminInstallMode then RootKey := HKEY_LOCAL_MACHINE else RootKey := HKEY_CURRENT_USER;
  if not RegQueryStringValue(RootKey, EnvKey(''), 'Path', Paths) then
  begin
    Result := True;
    exit;
  end;
  Result := Pos(';' + Uppercase(Dir) + ';', ';' + Uppercase(Paths) + ';') = 0;
end;

procedure RemoveFromPath(Dir: String);
var
  Paths: String;
  P: Integer;
  RootKey: Integer;
begin
  if IsAdminInstallMode then RootKey := HKEY_LOCAL_MACHINE else RootKey := HKEY_CURRENT_USER;
  if not RegQueryStringValue(RootKey, EnvKey(''), 'Path', Paths) then exit;
  P := Pos(';' + Uppercase(Dir), Uppercase(Paths));
  if P = 0 then exit;
  Delete(Paths, P, Length(Dir) + 1);
  RegWriteExpandStringValue(RootKey, EnvKey(''), 'Path', Paths);
end;

procedure CurUninstallStepChanged(CurUninstallStep: TUninstallStep);
begin
  if CurUninstallStep = usPostUninstall then
    RemoveFromPath(ExpandConstant('{app}'));
end;
