import Foundation
import Training
import XCTest

/// Training and dataset errors carry what they are about as fields, not only in their text.
final class TypedErrorTests: XCTestCase {
    func testSettingErrorsNameFlagKeyValueAndWhatIsAllowed() {
        var config = TrainingConfig()
        config.evalSteps = 0
        XCTAssertThrowsError(try config.validate()) { error in
            let setting = (error as? TrainingError)?.setting
            XCTAssertEqual(setting?.flag, "--eval-steps")
            XCTAssertEqual(setting?.key, "eval_steps")
            XCTAssertEqual(setting?.found, "0")
            XCTAssertFalse(setting?.allowed.isEmpty ?? true)
        }
    }

    func testDatasetErrorsNameFileAndLine() throws {
        let dir = makeTemporaryDirectory(self)
        let path = dir + "/data.jsonl"
        try Data(#"{"input_ids": [1, 2, 3]}\#n{"input_ids": [1, "x"]}\#n"#.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try TextDataset.load(path: path, tokenizer: nil, vocabularySize: 10,
                                                  options: DatasetOptions())) { error in
            let e = error as? DatasetError
            XCTAssertEqual(e?.path, path)
            XCTAssertEqual(e?.line, 2)
            XCTAssertTrue(e?.reason.contains("input_ids") ?? false, "\(error)")
            XCTAssertEqual("\(error)", "\(path):2: \(e?.reason ?? "")")
        }
    }
}
